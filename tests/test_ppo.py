"""PPO on the tiny model: it learns a rule reward, handles live rows, saves its value head."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from engine.protocol import NonFiniteLoss
from engine.rollouts import prompt_ids, roll_out
from engine.trainers.ppo import PPOConfig, PPOTrainer
from tui_align.cli import app

METRICS = {"kl", "clipfrac", "value_loss", "policy_loss", "score", "response_length"}


def test_ppo_raises_a_rule_reward(tiny_policy):
    policy, tokenizer = tiny_policy
    # The random tiny model's next-token distribution is nearly uniform over 49k tokens, so
    # almost no rule reward would ever be sampled. Sharpening its final norm makes it
    # mostly repeat the prompt's last token ("\n" after the chat template's
    # "assistant\n"); the rule rewards replies that avoid it.
    policy.get_base_model().model.norm.weight.data.mul_(14)
    trainer = PPOTrainer(policy, tokenizer, PPOConfig(lr=3e-3, batch_size=8, mini_batch_size=8, ppo_epochs=4,
                                                      max_new_tokens=4, kl_coef=0.01))

    def no_newlines(prompts, responses):
        return [max(0.0, 1 - r.count("\n") / 4) for r in responses]

    history = trainer.fit_online(["hello there", "how are you", "tell me a story", "what is two plus two"], no_newlines, 20)
    scores = [h["score"] for h in history]
    first, last = sum(scores[:3]) / 3, sum(scores[-5:]) / 5
    assert first < 0.6 and last > 0.85 and last > first + 0.3, scores
    assert all(METRICS <= h.keys() for h in history)


def test_step_examples_from_live_rows(tiny_policy):
    policy, tokenizer = tiny_policy
    trainer = PPOTrainer(policy, tokenizer, PPOConfig(lr=1e-3, mini_batch_size=2, ppo_epochs=2))
    rows = [
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello!"}], "score": 1},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Go away.", "score": -1.0},
        {"prompt": "Plain text prompt", "completion": " and its completion", "score": 0.5},
    ]
    metrics = trainer.step_examples(rows)
    assert METRICS <= metrics.keys()
    assert metrics["score"] == pytest.approx(0.5 / 3)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B = 0: the policy starts as the reference
    metrics = trainer.step_examples(rows)
    assert metrics["kl"] != 0.0  # the first step moved the policy
    assert all(torch.isfinite(p).all() for p in trainer.params)


def test_non_finite_scores_discard_the_whole_update(tiny_policy):
    from engine.versions import adapter_state

    policy, tokenizer = tiny_policy
    trainer = PPOTrainer(policy, tokenizer, PPOConfig(mini_batch_size=1, ppo_epochs=1))
    before = adapter_state(policy)
    head = {k: v.clone() for k, v in trainer.value_head.state_dict().items()}
    prompt = prompt_ids(tokenizer, "Hi")
    with pytest.raises(NonFiniteLoss):
        trainer.step([prompt, prompt], [[100, 101], [102]], [1.0, float("nan")])
    after = adapter_state(policy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(head[k], v) for k, v in trainer.value_head.state_dict().items())


def test_value_head_saves_and_reloads_with_a_version(tiny_policy, tmp_path):
    from engine.value_head import ValueHead
    from engine.versions import load_adapter

    policy, tokenizer = tiny_policy
    trainer = PPOTrainer(policy, tokenizer, PPOConfig(lr=1e-2, mini_batch_size=2, ppo_epochs=1))
    prompt = prompt_ids(tokenizer, "Hi")
    trainer.step([prompt, prompt], [[100, 101, 2], [102, 2]], [1.0, 0.0])
    trainer.save(tmp_path / "v0001")
    assert (tmp_path / "v0001" / "value_head.safetensors").exists()
    fresh = ValueHead.for_model(policy)
    assert not torch.equal(fresh.summary.weight, trainer.value_head.summary.weight)
    meta = load_adapter(policy, tmp_path / "v0001", value_head=fresh)
    assert meta["method"] == "ppo"
    for key, value in trainer.value_head.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_rollouts_return_completion_ids_and_scores(tiny_policy):
    policy, tokenizer = tiny_policy
    config = PPOConfig(max_new_tokens=5)
    prompts = ["Hi", [{"role": "user", "content": "A much longer prompt than the first one"}]]
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    seen = []

    def reward(texts, replies):
        seen.append(texts)
        return [float(len(r)) for r in replies]

    rolled = roll_out(policy, tokenizer, prompts, encoded, [(0, 1), (1, 2)], 3, config, reward)
    assert seen == [["Hi"] * 3 + ["A much longer prompt than the first one"] * 3]  # one call, prompt texts
    assert [r.prompt for r in rolled] == prompts and [r.prompt_ids for r in rolled] == encoded
    for r in rolled:
        assert len(r.completions) == len(r.texts) == len(r.scores) == 3
        assert r.scores == [float(len(t)) for t in r.texts]
        for completion in r.completions:
            assert 1 <= len(completion) <= 5 and tokenizer.eos_token_id not in completion[:-1]
    again = roll_out(policy, tokenizer, prompts, encoded, [(1, 2)], 3, config, reward)
    assert again[0].completions == rolled[1].completions  # a slot's seed alone decides its samples


def test_train_ppo_cli_writes_adapter_value_head_and_history(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\n\nTell me a story\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["train", "ppo", "--prompts", prompts, "--reward", "length", "--output", out,
                                      "--model", tiny_model_dir, "--steps", "2", "--batch-size", "2",
                                      "--max-new-tokens", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "trained ppo for 2 steps on 2 prompts" in result.output
    assert (out / "adapter_model.safetensors").exists() and (out / "value_head.safetensors").exists()
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2] and METRICS <= history[0].keys()


def test_train_ppo_cli_user_errors(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    broken = tmp_path / "judge.py"
    broken.write_text(textwrap.dedent("""
        def score(prompts, responses):
            return [len(r) / 0 for r in responses]
    """))
    cases = [
        (["--reward", f"{broken}:score"], [f"{broken}:3", "ZeroDivisionError", "return [len(r) / 0"]),
        (["--reward", "nope"], ["--reward nope"]),
        (["--reward", "length", "--batch-size", "0"], ["--batch-size must be at least 1"]),
    ]
    for flags, fragments in cases:
        out = tmp_path / "out"
        result = CliRunner().invoke(app, ["train", "ppo", "--prompts", str(prompts), "--output", str(out), "--model",
                                          str(tiny_model_dir), "--steps", "1", "--batch-size", "1",
                                          "--max-new-tokens", "2", "--device", "cpu", *flags])
        assert result.exit_code == 2, result.output
        # The error is the last line (progress bars may come before it), with no traceback.
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
        assert all(f in last for f in fragments), last
        assert not out.exists() and not (tmp_path / "out.partial").exists()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"question": "?"}) + "\n")
    result = CliRunner().invoke(app, ["train", "ppo", "--prompts", str(bad), "--reward", "length", "--output",
                                      str(tmp_path / "out"), "--model", str(tiny_model_dir)])
    assert result.exit_code == 2 and "row 2" in result.stderr, result.output
