"""`tui-align replay`: a session's feedback trains in batch, with a summary of what was used and skipped."""

from __future__ import annotations

import json

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
                                 "--batch-size", "2", "--save-steps", "1", "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "used 2 marked replies" in result.output and "kl=" in result.output
    assert (out / "adapter_model.safetensors").exists()
    # a checkpoint names its method, or resuming it is refused as another method's
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["method"] == "kto"


def test_replay_bad_inputs(tmp_path):
    build(tmp_path, "ties", pairs=0, ties=2)
    build(tmp_path, "pairs", pairs=2)
    with SessionStore.open(tmp_path, "equal") as store:
        turn = store.add_user_turn(store.new_conversation(), "Say hi.")
        for response in store.add_responses(turn, [{"text": "Hi."}, {"text": "Hello."}], 0, {}):
            store.record_rating(response, 4, "1-5")
    for args, message in [(["replay", "pairs", "--loss-type", "dpo", "--output", str(tmp_path / "o")],
                           "--loss-type dpo: unknown loss type"),
                          (["replay", "pairs", "--loss-type", "ipo,sft", "--loss-weights", "1,1,1", "--output",
                            str(tmp_path / "o")], "--loss-weights has 3 weight(s) for 2 loss type(s)"),
                          (["replay", "missing", "--output", str(tmp_path / "o")], "no session 'missing'"),
                          (["replay", "ties", "--output", str(tmp_path / "o")], "no pairs to train on"),
                          (["replay", "ties", "--method", "kto", "--output", str(tmp_path / "o")], "no marked replies"),
                          (["replay", "ties", "--method", "grpo", "--output", str(tmp_path / "o")],
                           "no scored groups to train on in ties"),
                          (["replay", "equal", "--method", "grpo", "--output", str(tmp_path / "o")],
                           "no scored groups to train on in equal (skipped: 1 group(s) whose scores are all equal)"),
                          (["replay", "equal", "--method", "grpo", "--beta", "-1", "--output", str(tmp_path / "o")],
                           "--beta -1.0: grpo's KL weight must be >= 0"),
                          (["replay", "equal", "--method", "grpo", "--loss-type", "sigmoid", "--output", str(tmp_path / "o")],
                           "--loss-type sigmoid: grpo's are dapo, grpo"),
                          (["replay", "equal", "--method", "grpo", "--epsilon", "0", "--output", str(tmp_path / "o")],
                           "--epsilon 0.0: must be > 0"),
                          (["replay", "ties", "--method", "ppo", "--output", str(tmp_path / "o")], "--method ppo")]:
        result = runner.invoke(app, [*args, "--sessions-dir", str(tmp_path)])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "o").exists()


SCORED = [  # one turn each: (reply, 1-5 score) in the order scored
    [("Hello there!", 5), ("Go away, I am busy.", 1), ("Hi.", 3)],
    [("Blue.", 4), ("I will not say.", 2)],
    [("Yes.", 3), ("No.", 3)],  # all equal: no advantage, skipped
    [("Alone.", 4)],  # one score: no group, skipped
]


def scored_session(root, name, model):
    with SessionStore.open(root, name, model=model) as store:
        conv = store.new_conversation()
        for i, scored in enumerate(SCORED):
            turn = store.add_user_turn(conv, f"Say something {i}.")
            replies = store.add_responses(turn, [{"text": text} for text, _ in scored], 0, {})
            for response, (_, score) in zip(replies, scored):
                store.record_rating(response, score, "1-5")
        store.record_rating(replies[0], 1, "1-5")  # a re-score: the 4 is replaced; still one score in its turn
        return store


def test_replay_grpo_trains_on_the_exported_groups(tmp_path, tiny_model_dir):
    """The groups are those `sessions export --kind grpo` writes, less those that teach nothing; after
    training the best-scored reply of a group gains log-prob on the worst; checkpoints resume exactly."""
    import torch
    from safetensors.torch import load_file

    from engine.data import collate
    from engine.logprobs import sequence_logps
    from engine.models import add_lora, load_model
    from engine.trainers.grpo import GRPOTrainer
    from tui_align.cli.replay import collect

    scored_session(tmp_path, "scores", str(tiny_model_dir))
    exported = tmp_path / "groups.jsonl"
    assert runner.invoke(app, ["sessions", "export", "scores", "--kind", "grpo", "--out", str(exported),
                               "--sessions-dir", str(tmp_path)]).exit_code == 0
    groups = [json.loads(line) for line in exported.read_text().splitlines()]
    with SessionStore.open(tmp_path, "scores", readonly=True) as store:
        rows, skipped = collect(store, "grpo")
    assert rows == groups[:2] and [g["scores"] for g in groups] == [[5, 1, 3], [4, 2], [3, 3]]
    assert skipped == {"turn(s) with a single score": 1, "group(s) whose scores are all equal": 1}

    out = tmp_path / "grpo"
    args = ["replay", "scores", "--method", "grpo", "--max-steps", "4", "--batch-size", "4", "--lr", "2e-2",
            "--save-steps", "2", "--sessions-dir", str(tmp_path)]
    result = runner.invoke(app, [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "scores: 2 scored groups" in result.output and "used 2 scored groups from 1 session(s)" in result.output
    assert "skipped: 1 turn(s) with a single score, 1 group(s) whose scores are all equal" in result.output
    assert "kl=" in result.output and "epoch=4," in result.output  # a batch bigger than the rows is one epoch
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["method"] == "grpo"
    assert json.loads((out / "metadata.json").read_text())["config"]["loss_type"] == "dapo"  # TRL 1.16's default
    other = tmp_path / "other"
    result = runner.invoke(app, [*args[:4], "--max-steps", "1", "--loss-type", "grpo", "--epsilon", "0.3",
                                 "--sessions-dir", str(tmp_path), "--output", str(other)])
    assert result.exit_code == 0, result.output
    config = json.loads((other / "metadata.json").read_text())["config"]
    assert (config["loss_type"], config["epsilon"]) == ("grpo", 0.3)

    resumed = tmp_path / "resumed"
    result = runner.invoke(app, [*args, "--output", str(resumed), "--resume-from-checkpoint", str(out / "checkpoint-2")])
    assert result.exit_code == 0, result.output
    trained = load_file(out / "adapter_model.safetensors")
    assert all(torch.equal(trained[k], v) for k, v in load_file(resumed / "adapter_model.safetensors").items())

    base, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    policy = add_lora(base, adapter_path=out)
    (prompt, completions, _), = GRPOTrainer(policy, tokenizer).encode(rows[:1])
    batch = collate([(prompt, c) for c in completions], tokenizer.pad_token_id)
    with torch.no_grad():
        after = sequence_logps(policy, **batch)
        with policy.disable_adapter():
            before = sequence_logps(policy, **batch)
    assert not torch.allclose(after, before)  # the adapter changed
    assert after[0] - after[1] > before[0] - before[1]  # the 5 gained on the 1
