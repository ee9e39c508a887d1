"""`tui-align sessions`: list/show, export in TRL's formats (read by real TRL trainers), import, bad inputs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tui_align.cli import app
from tui_align.store import SessionStore

runner = CliRunner()


def cli(*args, root):
    return runner.invoke(app, [*args, "--sessions-dir", str(root)])


def build_session(root, name="s", model=None):
    """Two conversations: picks, a tie, ratings that pair up, an edit, a neutral rating."""
    with SessionStore.open(root, name, model=model) as store:
        conv = store.new_conversation(system="Answer briefly.")
        t1 = store.add_user_turn(conv, "What is 2+2?")
        a, b = store.add_responses(t1, [{"text": "4."}, {"text": "Let me think about it at length"}], 0, {})
        store.record_preference(t1, a, [b])
        t2 = store.add_user_turn(conv, "And 3+3?")
        c, d = store.add_responses(t2, [{"text": "6."}, {"text": "Six, I believe, or so."}], 0, {})
        store.record_rating(c, 5)
        store.record_rating(d, 3)  # neutral: a pair with c, no KTO row
        store.record_demonstration(t2, "6", edited_from=c)  # preferred over c and d: two pairs
        t3 = store.add_user_turn(store.new_conversation(), "Name a colour.")
        e, f = store.add_responses(t3, [{"text": "Red."}, {"text": "Blue."}], 0, {})
        store.record_preference(t3, None, [e, f], outcome="tie")
        store.record_rating(e, 1, "thumbs")
        store.record_rating(f, 0, "thumbs")
    return root / name


def test_list_and_show(tmp_path):
    build_session(tmp_path, model="tiny-model")
    result = cli("sessions", "list", root=tmp_path)
    assert result.exit_code == 0, result.output
    assert "s " in result.output and "tiny-model" in result.output
    line = result.output.splitlines()[1].split()
    assert line[2:8] == ["3", "5", "4", "1", "0", "0"]  # prompts, pairs, ratings, demos, updates, version
    result = cli("sessions", "show", "s", "--last", "2", root=tmp_path)
    assert result.exit_code == 0, result.output
    assert "pairs 5" in result.output and "Name a colour." in result.output and "* [demonstration" in result.output


@pytest.mark.parametrize("fmt", ["jsonl", "hf"])
def test_export_import_round_trip_is_lossless(tmp_path, fmt):
    build_session(tmp_path)
    expected = {"preference": 5, "sft": 2, "kto": 3, "grpo": 1}  # sft: the edit and the pick of t1; kto: the 5 and
    # two thumbs; grpo: t2's 1-5 scores
    for kind, count in expected.items():
        out, again = tmp_path / f"{kind}.out", tmp_path / f"{kind}.again"
        result = cli("sessions", "export", "s", "--kind", kind, "--format", fmt, "--out", str(out), root=tmp_path)
        assert result.exit_code == 0, result.output
        result = cli("sessions", "import", str(out), "--name", f"back-{kind}", root=tmp_path)  # kind detected
        assert result.exit_code == 0, result.output
        assert f"imported {count} {kind} rows" in result.output
        assert cli("sessions", "export", f"back-{kind}", "--kind", kind, "--format", fmt, "--out", str(again),
                   root=tmp_path).exit_code == 0
        first, second = _rows(out), _rows(again)
        assert first == second and len(first) == count
    assert [row["label"] for row in _rows(tmp_path / "kto.out")] == [True, True, False]
    old_name = tmp_path / "ratings.out"  # the kind's earlier name exports the same rows
    assert cli("sessions", "export", "s", "--kind", "ratings", "--format", fmt, "--out", str(old_name),
               root=tmp_path).exit_code == 0
    assert _rows(old_name) == _rows(tmp_path / "kto.out")


def _rows(path):
    if path.is_dir():
        from datasets import load_from_disk

        return list(load_from_disk(str(path)))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exports_feed_real_trl_trainers(tmp_path, tiny_model_dir):
    """Each export, loaded with `datasets`, goes through a real TRL trainer's dataset preparation."""
    trl = pytest.importorskip("trl")
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build_session(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainers = {"preference": (trl.DPOTrainer, trl.DPOConfig, "chosen_ids"),
                "sft": (trl.SFTTrainer, trl.SFTConfig, "input_ids"),
                "kto": (trl.KTOTrainer, trl.KTOConfig, "completion_ids")}
    for kind, (trainer_class, config_class, tokenized) in trainers.items():
        out = tmp_path / f"{kind}.jsonl"
        assert cli("sessions", "export", "s", "--kind", kind, "--out", str(out), root=tmp_path).exit_code == 0
        dataset = load_dataset("json", data_files=str(out), split="train")
        assert trl.data_utils.is_conversational(dataset[0])
        args = config_class(output_dir=str(tmp_path / f"trl-{kind}"), report_to=[], max_steps=1, bf16=False, use_cpu=True)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        assert len(trainer.train_dataset) == len(dataset) and tokenized in trainer.train_dataset.column_names
        assert all(len(ids) > 0 for ids in trainer.train_dataset[tokenized])
    # grpo: TRL's prompt-only format, the scored replies as extra columns; GRPOTrainer templates the prompt so
    out = tmp_path / "grpo.jsonl"
    assert cli("sessions", "export", "s", "--kind", "grpo", "--out", str(out), root=tmp_path).exit_code == 0
    (row,) = load_dataset("json", data_files=str(out), split="train")
    assert trl.data_utils.is_conversational(row) and row["scores"] == [5, 3]
    assert [c[0]["content"] for c in row["completions"]] == ["6.", "Six, I believe, or so."]
    text = trl.data_utils.maybe_apply_chat_template({"prompt": row["prompt"]}, tokenizer)["prompt"]
    assert text.rstrip().endswith("assistant") and "And 3+3?" in text


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    build_session(tmp_path)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "session.db").write_bytes(b"garbage" * 500)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{not json\n')
    (tmp_path / "odd.jsonl").write_text('{"question": "hi"}\n')
    (tmp_path / "unlabelled.jsonl").write_text('{"prompt": "hi", "completion": "a", "label": true}\n'
                                               '{"prompt": "hi", "completion": "b"}\n')
    (tmp_path / "exists.jsonl").write_text("")
    group = {"prompt": "hi", "completions": ["a", "b"], "scores": [5, 7]}
    (tmp_path / "scores.jsonl").write_text(json.dumps(group) + "\n")
    (tmp_path / "alone.jsonl").write_text(json.dumps({**group, "completions": ["a"], "scores": [5]}) + "\n")
    cases = [
        (("sessions", "show", "nope"), "no session 'nope'"),
        (("sessions", "show", "corrupt"), "not a readable SQLite database"),
        (("sessions", "export", "s", "--kind", "votes", "--out", str(tmp_path / "x")), "--kind votes"),
        (("sessions", "export", "s", "--out", str(tmp_path / "exists.jsonl")), "already exists"),
        (("sessions", "export", "s", "--out", str(tmp_path / "missing" / "dir" / "pairs.jsonl")), "no folder"),
        (("sessions", "leaderboard", "nope"), "no session 'nope'"),
        (("sessions", "import", str(tmp_path / "bad.jsonl"), "--name", "n"), "bad.jsonl:2: not valid JSON"),
        (("sessions", "import", str(tmp_path / "odd.jsonl"), "--name", "n"), "cannot tell the kind"),
        (("sessions", "import", str(tmp_path / "unlabelled.jsonl"), "--name", "n"), "row 2: missing key label"),
        (("sessions", "import", str(tmp_path / "missing.jsonl"), "--name", "n"), "no such file"),
        (("sessions", "import", str(tmp_path / "bad.jsonl"), "--name", "s"), "already exists"),
        (("sessions", "import", str(tmp_path / "scores.jsonl"), "--name", "n"), "row 1: score 2 is 7: outside the 1-5"),
        (("sessions", "import", str(tmp_path / "alone.jsonl"), "--name", "n"), "row 1: completions must be a list of at least 2"),
    ]
    for args, message in cases:
        result = cli(*args, root=tmp_path)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.output
    assert not (tmp_path / "n").exists() and not (tmp_path / "x").exists() and not (tmp_path / "missing").exists()
    listing = cli("sessions", "list", root=tmp_path)
    assert listing.exit_code == 0 and "corrupt" in listing.output and "unreadable" in listing.output


def test_newer_schema_is_refused_by_the_cli(tmp_path):
    from sqlite_utils import Database

    build_session(tmp_path)
    Database(tmp_path / "s" / "session.db")["_sqlite_migrations"].insert(
        {"migration_set": "tui-align-session", "name": "m050_future", "applied_at": "2030"})
    result = cli("sessions", "show", "s", root=tmp_path)
    assert result.exit_code == 2 and "newer tui-align" in result.stderr
