"""`tui-align replay`: a session's feedback trains in batch, with a summary of what was used and skipped."""

from __future__ import annotations

from typer.testing import CliRunner

from tui_align.cli import app
from tui_align.store import SessionStore

runner = CliRunner()


def build(root, name, pairs, ties=0, model=None):
    with SessionStore.open(root, name, model=model) as store:
        conv = store.new_conversation(system="Answer briefly.")
        for i in range(pairs + ties):
            turn = store.add_user_turn(conv, f"Question {i}?")
            a, b = store.add_responses(turn, [{"text": f"Answer {i}."}, {"text": f"A long answer {i} " * 3}], 0, {})
            if i < pairs:
                store.record_preference(turn, a, [b])
            else:
                store.record_preference(turn, None, [a, b], outcome="tie")
        store.record_demonstration(turn, "Written by hand.")
        return store.pending_count("dpo")


def test_replay_reproduces_the_pairs_and_trains(tmp_path, tiny_model_dir):
    assert build(tmp_path, "one", pairs=5, ties=2, model=str(tiny_model_dir)) == 5
    assert build(tmp_path, "two", pairs=3, model=str(tiny_model_dir)) == 3
    out = tmp_path / "adapter"
    result = runner.invoke(app, ["replay", "one", "two", "--output", str(out), "--max-steps", "2", "--batch-size", "4",
                                 "--rpo-alpha", "1.0", "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "one: 5 pairs" in result.output and "two: 3 pairs" in result.output
    assert "used 8 pairs from 2 session(s)" in result.output
    assert "2 tie (not a preference)" in result.output
    assert "final: " in result.output and "loss=" in result.output
    assert (out / "adapter_model.safetensors").exists()

    sft_out = tmp_path / "sft"
    result = runner.invoke(app, ["replay", "one", "--method", "sft", "--output", str(sft_out), "--max-steps", "1",
                                 "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # SFT trains on what the person accepted: the 5 picked replies and the 1 written reply
    assert "used 6 demonstrations" in result.output and (sft_out / "adapter_model.safetensors").exists()


def test_replay_kto_trains_on_the_marked_replies(tmp_path, tiny_model_dir):
    with SessionStore.open(tmp_path, "marks", model=str(tiny_model_dir)) as store:
        turn = store.add_user_turn(store.new_conversation(), "Say hi.")
        replies = store.add_responses(turn, [{"text": "Hi!"}, {"text": "No."}, {"text": "Hello."}], 0, {})
        for response, up in zip(replies, (1, 0, 1)):
            store.record_rating(response, up, "thumbs")
        store.withdraw_rating(store.record_rating(replies[2], 0, "thumbs"))  # a re-score, taken back: both gone
    out = tmp_path / "kto"
    result = runner.invoke(app, ["replay", "marks", "--method", "kto", "--output", str(out), "--max-steps", "1",
                                 "--batch-size", "2", "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "used 2 marked replies" in result.output and "kl=" in result.output
    assert (out / "adapter_model.safetensors").exists()


def test_replay_bad_inputs(tmp_path):
    build(tmp_path, "ties", pairs=0, ties=2)
    build(tmp_path, "pairs", pairs=2)
    for args, message in [(["replay", "pairs", "--loss-type", "dpo", "--output", str(tmp_path / "o")],
                           "--loss-type dpo: unknown loss type"),
                          (["replay", "pairs", "--loss-type", "ipo,sft", "--loss-weights", "1,1,1", "--output",
                            str(tmp_path / "o")], "--loss-weights has 3 weight(s) for 2 loss type(s)"),
                          (["replay", "missing", "--output", str(tmp_path / "o")], "no session 'missing'"),
                          (["replay", "ties", "--output", str(tmp_path / "o")], "no pairs to train on"),
                          (["replay", "ties", "--method", "kto", "--output", str(tmp_path / "o")], "no marked replies"),
                          (["replay", "ties", "--method", "ppo", "--output", str(tmp_path / "o")], "--method ppo")]:
        result = runner.invoke(app, [*args, "--sessions-dir", str(tmp_path)])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "o").exists()
