"""A reward model learns to rank a toy preference set, and loads back as --reward rm:PATH."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tui_align.cli import app

TOPICS = ["cats", "dogs", "birds", "fish", "trees", "rain", "books", "music"]
PAIRS = [{"prompt": [{"role": "user", "content": f"Tell me about {w}."}],
          "chosen": [{"role": "assistant", "content": f"I love {w}, thank you!"}],
          "rejected": [{"role": "assistant", "content": f"I hate {w}."}]} for w in TOPICS]


def test_reward_model_learns_to_rank_and_loads_as_rm(tmp_path, tiny_model_dir):
    import torch

    from engine.models import LoRAConfig
    from engine.rewards import load_reward
    from engine.trainers import TrainConfig
    from engine.trainers.reward import RewardTrainer, add_reward_lora, load_reward_base

    torch.manual_seed(0)
    base, tokenizer = load_reward_base(str(tiny_model_dir), device="cpu")
    trainer = RewardTrainer(add_reward_lora(base, LoRAConfig(r=8, alpha=16)), tokenizer,
                            TrainConfig(lr=1e-2, batch_size=8, max_steps=8))
    before = trainer.evaluate(PAIRS)
    metrics = trainer.fit(PAIRS, progress=False)
    after = trainer.evaluate(PAIRS)
    assert before["accuracy"] <= 0.5 < after["accuracy"], (before, after)
    assert after["margin"] > before["margin"] + 1
    assert {"accuracy", "margin", "loss"} <= metrics.keys()

    folder = tmp_path / "rm"
    trainer.save(folder, {"model": str(tiny_model_dir)})
    reward = load_reward(f"rm:{folder}", device="cpu")
    prompts = [f"Tell me about {w}." for w in TOPICS]
    chosen = reward(prompts, [f"I love {w}, thank you!" for w in TOPICS])
    rejected = reward(prompts, [f"I hate {w}." for w in TOPICS])
    loaded_accuracy = sum(c > r for c, r in zip(chosen, rejected)) / len(TOPICS)
    assert abs(loaded_accuracy - after["accuracy"]) < 1e-6


def test_train_rm_cli(tmp_path, tiny_model_dir):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "rm"
    result = CliRunner().invoke(app, ["train", "rm", "--data", str(data), "--output", str(out), "--model",
                                      str(tiny_model_dir), "--max-steps", "2", "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "use --reward rm:" in result.output
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "metadata.json").read_text())["kind"] == "reward_model"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    result = CliRunner().invoke(app, ["train", "rm", "--data", str(bad), "--output", str(tmp_path / "rm2"),
                                      "--model", str(tiny_model_dir)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "row 2" in lines[0] and "rejected" in lines[0], result.stderr
    assert not (tmp_path / "rm2").exists()
