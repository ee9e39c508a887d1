"""`fit` under two launched CPU processes (gloo): gradients are averaged, so both
ranks end with the same adapter, and that adapter equals one process training on both shards;
checkpoints are written by the main process only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import sys, torch
    from engine.models import LoRAConfig, add_lora, load_model
    from engine.trainers import DPOTrainer, TrainConfig
    from engine.trainers.base import process_state
    from engine.versions import adapter_state

    model_dir, out = sys.argv[1], sys.argv[2]
    state = process_state()
    torch.manual_seed(0)
    base, tokenizer = load_model(model_dir, device="cpu")
    policy = add_lora(base, LoRAConfig(r=4, alpha=8))
    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": f"No, {i} times no."} for i in range(4)]
    # grad_accum 2 with batch 1: one step sees rows 0-1 on one process; with two processes,
    # batch 1 per rank and grad_accum 1 sees the same two rows.
    per_rank = dict(batch_size=1, grad_accum=2 // state.num_processes)
    trainer = DPOTrainer(policy, tokenizer, TrainConfig(lr=1e-2, max_steps=1, shuffle=False, save_steps=1, **per_rank))
    trainer.fit(rows[:2], progress=False, output_dir=f"{out}/run-of-{state.num_processes}")
    torch.save(adapter_state(trainer.model), f"{out}/rank{state.process_index}-of-{state.num_processes}.pt")
''')


def test_two_processes_average_gradients(tiny_model_dir, tmp_path):
    import torch

    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; on a CPU-only machine
    # accelerate's own launcher starts a single process.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    for command in (launch, [sys.executable]):
        done = subprocess.run([*command, str(script), str(tiny_model_dir), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{r}-of-2.pt") for r in (0, 1)]
    single = torch.load(tmp_path / "rank0-of-1.pt")
    assert ranks[0].keys() == single.keys()
    moved = False
    for key in single:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks disagree on {key}"
        torch.testing.assert_close(ranks[0][key], single[key], atol=1e-5, rtol=1e-4)
        moved |= bool((single[key] != 0).any()) and "lora_B" in key
    assert moved, "the step changed no LoRA B weight"
    # checkpoints: written once, by the main process, with the same adapter as the ranks ended with
    from safetensors.torch import load_file

    for processes in (1, 2):
        run = tmp_path / f"run-of-{processes}"
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {p.name for p in (run / "checkpoint-1").iterdir()}
    saved = load_file(tmp_path / "run-of-2" / "checkpoint-1" / "adapter_model.safetensors")
    assert saved.keys() == ranks[0].keys()
    assert all(torch.equal(saved[key], ranks[0][key]) for key in saved)


GRPO_SCRIPT = textwrap.dedent('''
    import sys
    from engine.headless_grpo import train_grpo
    from engine.models import LoRAConfig
    from engine.protocol import GRPOConfig
    from engine.trainers.base import process_state

    model_dir, out = sys.argv[1], sys.argv[2]
    # 2 groups of 3 per step: one process generates both, two generate one each (same prompts, same seeds)
    config = GRPOConfig(lr=1e-2, num_generations=3, prompts_per_step=2, max_new_tokens=6)
    train_grpo(["Say yes.", "Name a colour.", "Count to three."], "length", f"{out}/grpo-{process_state().num_processes}",
               model_dir, config, LoRAConfig(r=4, alpha=8), steps=1, device="cpu", progress=False)
''')


def test_grpo_two_processes_equal_one(tiny_model_dir, tmp_path):
    """`train grpo`'s function under two gloo processes: each generates half the step's groups, the dapo
    normaliser counts both processes' tokens, so the adapter equals that of one process taking every group."""
    import torch
    from safetensors.torch import load_file

    script = tmp_path / "grpo.py"
    script.write_text(GRPO_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    for command in (launch, [sys.executable]):
        done = subprocess.run([*command, str(script), str(tiny_model_dir), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    two, one = (load_file(tmp_path / f"grpo-{n}" / "adapter_model.safetensors") for n in (2, 1))
    assert two.keys() == one.keys() and not (tmp_path / "grpo-2.partial").exists()
    moved = False
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
        moved |= bool((one[key] != 0).any()) and "lora_B" in key
    assert moved, "the step changed no LoRA B weight"

