"""`tui-align train sft|dpo`: it trains and saves, and bad input gets one clear line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tui_align.cli import app

PREFERENCES = [
    {"prompt": "Say yes.", "chosen": " yes", "rejected": " no"},
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
]
MARKED = [
    {"prompt": "Say yes.", "completion": " yes", "label": True},
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "completion": [{"role": "assistant", "content": "Go away."}], "label": False},
    {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}],
     "label": True},
]
DEMOS = [
    {"prompt": "Two plus two is", "completion": " four."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_DATA = [
    ("missing-key", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
     ["row 2", "missing key rejected"]),
    ("empty", b"", ["no rows"]),
    ("blank-lines", b"\n\n  \n", ["no rows"]),
    ("wrong-type", b'{"prompt": "a", "chosen": 3, "rejected": "c"}\n', ["row 1", "chosen must be a string"]),
    ("bad-messages", b'{"prompt": [{"role": "user"}], "chosen": [], "rejected": []}\n', ["row 1", "prompt"]),
    ("not-utf8", b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n', ["not UTF-8"]),
    ("bad-json", b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": \n', [":2:", "not valid JSON"]),
    ("not-object", b'["a", "b", "c"]\n', [":1:", "JSON object"]),
    ("sft-rows", b'{"prompt": "a", "completion": "b"}\n', ["row 1", "missing keys chosen, rejected"]),
]


@pytest.mark.parametrize("name,content,fragments", BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_data_gets_one_line_naming_file_and_row(tmp_path, name, content, fragments):
    data = tmp_path / f"{name}.jsonl"
    data.write_bytes(content)
    output = tmp_path / "out"
    result = invoke("train", "dpo", "--data", data, "--output", output)
    assert_user_error(result, str(data), *fragments)
    assert not output.exists() and not (tmp_path / "out.partial").exists()


def test_bad_sft_rows_name_the_row(tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", [DEMOS[0], {"messages": [{"role": "user", "content": "only me"}]}])
    result = invoke("train", "sft", "--data", data, "--output", tmp_path / "out")
    assert_user_error(result, str(data), "row 2", "assistant")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--loss-type", "nope"], "--loss-type nope: unknown loss type 'nope'; choose from sigmoid, hinge, ipo"),
    (["--loss-type", "sigmoid,sft", "--loss-weights", "1"], "--loss-weights has 1 weight(s) for 2 loss type(s)"),
    (["--loss-weights", "1,1"], "--loss-weights has 2 weight(s) for 1 loss type(s) (sigmoid)"),
    (["--loss-type", "exo_pair"], "--label-smoothing 0: exo_pair needs its epsilon > 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--model", "./no-such-model"], "no such folder or file"),
])
def test_bad_flags(tmp_path, flags, fragment):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", *flags)
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()


def test_a_trl_style_yaml_gives_the_loss_as_lists(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)
    (tmp_path / "dpo.yaml").write_text("loss_type: [sigmoid, sft]\nloss_weights: [1.0]\n")
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", "--config", tmp_path / "dpo.yaml")
    assert_user_error(result, "--loss-weights has 1 weight(s) for 2 loss type(s) (sigmoid,sft)")


def test_missing_data_file_and_existing_output(tmp_path):
    result = invoke("train", "dpo", "--data", tmp_path / "nope.jsonl", "--output", tmp_path / "out")
    assert_user_error(result, "nope.jsonl", "no such file")
    existing = tmp_path / "done"
    existing.mkdir()
    (existing / "adapter_config.json").write_text("{}")
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)
    result = invoke("train", "dpo", "--data", data, "--output", existing)
    assert_user_error(result, str(existing), "already exists")
    assert (existing / "adapter_config.json").read_text() == "{}"


def test_unreachable_hub_model_fails_fast_in_one_line(tmp_path):
    """A real process, offline: one line on stderr, exit 2, no traceback, no output."""
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("tui-align")
    proc = subprocess.run(
        [str(cli), "train", "dpo", "--data", str(data), "--output", str(tmp_path / "out"),
         "--model", "nobody-here/no-such-model-xyz"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nobody-here/no-such-model-xyz" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_dpo_trains_saves_and_merges(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCES)
    output = tmp_path / "out"
    result = invoke("train", "dpo", "--data", data, "--output", output, "--model", tiny_model_dir,
                    "--max-steps", 3, "--batch-size", 2, "--lr", "1e-2", "--merge", "--rpo-alpha", "1.0")
    assert result.exit_code == 0, result.output
    assert "trained dpo on 2 rows" in result.stdout
    assert not (tmp_path / "out.partial").exists()
    meta = json.loads((output / "metadata.json").read_text())
    assert meta["method"] == "dpo" and meta["rows"] == 2
    assert (meta["config"]["loss_type"], meta["config"]["loss_weights"]) == (["sigmoid", "sft"], [1.0, 1.0])  # the alias

    tokenizer = AutoTokenizer.from_pretrained(output)
    ids = tokenizer("A sentence to score.", return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        base_logits = base(**ids).logits
        adapted = PeftModel.from_pretrained(base, str(output))(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(output / "merged")(**ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-4)  # it did train
    assert torch.allclose(merged, adapted, atol=1e-5)


def test_sft_trains_from_a_saved_dataset_folder(tiny_model_dir, tmp_path):
    from datasets import Dataset

    folder = tmp_path / "demos"
    Dataset.from_list([{"messages": DEMOS[1]["messages"]}] * 3).save_to_disk(str(folder))
    output = tmp_path / "sft-out"
    result = invoke("train", "sft", "--data", folder, "--output", output, "--model", tiny_model_dir,
                    "--epochs", 2, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert (output / "adapter_model.safetensors").exists()
    assert json.loads((output / "metadata.json").read_text())["metrics"]["step"] == 4  # 2 batches x 2 epochs


def test_kto_trains_on_plain_and_conversational_rows(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "marked.jsonl", MARKED)
    output = tmp_path / "kto-out"
    result = invoke("train", "kto", "--data", data, "--output", output, "--model", tiny_model_dir,
                    "--max-steps", 2, "--batch-size", 3, "--lr", "1e-2", "--desirable-weight", "1.5")
    assert result.exit_code == 0, result.output
    assert "trained kto on 3 rows" in result.stdout and "kl=" in result.stdout
    meta = json.loads((output / "metadata.json").read_text())
    assert meta["method"] == "kto" and meta["config"]["desirable_weight"] == 1.5 and meta["metrics"]["step"] == 2
    assert (output / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("row,fragments", [
    ({"prompt": "a", "completion": "b"}, ["row 2", "missing key label"]),
    ({"prompt": "a", "completion": "b", "label": "yes"}, ["row 2", "label must be true", '"yes"']),
    ({"prompt": "a", "completion": "b", "label": 1}, ["row 2", "label must be true", "got 1"]),
    ({"prompt": "a", "label": False}, ["row 2", "missing key completion"]),
], ids=["no-label", "string-label", "number-label", "no-completion"])
def test_bad_kto_rows_name_the_row(tmp_path, row, fragments):
    data = write_jsonl(tmp_path / "marked.jsonl", [MARKED[0], row])
    result = invoke("train", "kto", "--data", data, "--output", tmp_path / "out")
    assert_user_error(result, str(data), *fragments)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_kto_needs_two_rows_a_batch(tmp_path):
    data = write_jsonl(tmp_path / "marked.jsonl", MARKED)
    result = invoke("train", "kto", "--data", data, "--output", tmp_path / "out", "--batch-size", 1)
    assert_user_error(result, "--batch-size must be at least 2 for kto")


@pytest.mark.parametrize("command", ["sft", "dpo", "kto"])
def test_help_explains_every_flag(command):
    result = CliRunner().invoke(app, ["train", command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    flags = ["--data", "--output", "--model", "--max-steps", "--epochs", "--batch-size", "--grad-accum", "--lr",
             "--max-length", "--lora-r", "--lora-alpha", "--seed", "--merge"]
    if command == "dpo":
        flags += ["--beta", "--loss-type", "--loss-weights", "--label-smoothing", "--discopop-tau", "--rpo-alpha",
                  "sigmoid_norm", "cDPO", "Alias"]
    if command == "kto":
        flags += ["--beta", "--desirable-weight", "--undesirable-weight"]
    for flag in flags:
        assert flag in result.output, flag


@pytest.mark.parametrize("extra", [[], ["--gradient-checkpointing"]])
def test_train_grpo_trains_and_writes_the_adapter(tmp_path, tiny_model_dir, extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say yes.\nName a colour.\n")
    output = tmp_path / "grpo"
    result = invoke("train", "grpo", "--prompts", prompts, "--reward", "length", "--num-generations", 2, "--steps", 2,
                    "--max-new-tokens", 4, "--model", tiny_model_dir, "--output", output, *extra)
    assert result.exit_code == 0, result.output
    assert "trained grpo for 2 steps on 2 prompts x 2 completions" in result.output
    history = [json.loads(line) for line in (output / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and all(h["completion_length"] <= 4 for h in history)
    assert json.loads((output / "metadata.json").read_text())["method"] == "grpo"
    assert (output / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--num-generations", "1"], "--num-generations 1: a group needs at least 2"),
    (["--reward", "nope"], "--reward nope: choose length"),
    (["--reward", "no_such_module_x:f"], "no module named 'no_such_module_x'"),
    (["--loss-type", "bnpo"], "--loss-type bnpo: choose one of dapo, grpo"),
    (["--steps", "0"], "--steps must be at least 1"),
])
def test_train_grpo_bad_flags(tmp_path, flags, fragment):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say yes.\n")
    args = ["train", "grpo", "--prompts", prompts, "--reward", "length", "--output", tmp_path / "out", "--model", "./no-model"]
    # later flags win: each case overrides one of the good ones
    result = invoke(*args, *flags)
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()
