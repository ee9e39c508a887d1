"""Headless training under two launched CPU processes (gloo): gradients are averaged, so both
ranks end with the same weights; for `fit` (DPO, reward model) they equal one process training
on both shards, and checkpoints are written by the main process only; PPO's ranks roll out
different replies and still agree; GRPO's ranks each generate their share of the groups and
equal one process generating all of them."""

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
    from engine.trainers.ppo import PPOConfig, PPOTrainer
    from engine.trainers.reward import RewardTrainer, add_reward_lora, load_reward_base
    from engine.versions import adapter_state

    model_dir, out = sys.argv[1], sys.argv[2]
    state = process_state()
    saved = {}
    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": f"No, {i} times no."} for i in range(4)]
    # grad_accum 2 with batch 1: one step sees rows 0-1 on one process; with two processes,
    # batch 1 per rank and grad_accum 1 sees the same two rows.
    per_rank = dict(batch_size=1, grad_accum=2 // state.num_processes)
    torch.manual_seed(0)
    base, tokenizer = load_model(model_dir, device="cpu")
    policy = add_lora(base, LoRAConfig(r=4, alpha=8))
    trainer = DPOTrainer(policy, tokenizer, TrainConfig(lr=1e-2, max_steps=1, shuffle=False, save_steps=1, **per_rank))
    trainer.fit(rows[:2], progress=False, output_dir=f"{out}/run-of-{state.num_processes}")
    saved["dpo"] = adapter_state(trainer.model)

    torch.manual_seed(0)
    rm_base, _ = load_reward_base(model_dir, device="cpu")
    rm = RewardTrainer(add_reward_lora(rm_base, LoRAConfig(r=4, alpha=8)), tokenizer,
                       TrainConfig(lr=1e-2, max_steps=1, shuffle=False, **per_rank))
    rm.fit(rows[:2], progress=False)
    saved["rm"] = adapter_state(rm.model)

    if state.num_processes > 1:  # PPO: each rank rolls out its own share of the prompts
        torch.manual_seed(0)
        base, _ = load_model(model_dir, device="cpu")
        ppo = PPOTrainer(add_lora(base, LoRAConfig(r=4, alpha=8)), tokenizer,
                         PPOConfig(lr=1e-2, batch_size=2, mini_batch_size=1, ppo_epochs=1, max_new_tokens=6))
        history = ppo.fit_online(["Hi.", "Count to three.", "Name a colour.", "Say yes."],
                          lambda prompts, replies: [float(len(r)) for r in replies], steps=1)
        saved["ppo"] = {**adapter_state(ppo.model), **{f"value_head.{k}": v for k, v in ppo.value_head.state_dict().items()}}
        saved["ppo_sample"] = history[0]["sample"]

        # what `tui-align train ppo` and `train rm` run: every rank trains, the main one writes
        from engine.headless_ppo import train_ppo
        from engine.headless import RunOptions, train

        lora = LoRAConfig(r=4, alpha=8)
        train_ppo(["Hi.", "Say yes."], "length", f"{out}/ppo-out", model_dir, PPOConfig(batch_size=1, mini_batch_size=1,
                  ppo_epochs=1, max_new_tokens=4), lora, steps=1, run=RunOptions(device="cpu", progress=False))
        train("rm", rows, f"{out}/rm-out", model_dir, TrainConfig(max_steps=1, batch_size=1), lora,
              RunOptions(device="cpu"))

    # `train grpo`: 2 groups of 3 per step; one process generates both, two generate one each
    # (same prompts, same seeds: train_grpo seeds itself)
    from engine.headless import RunOptions
    from engine.headless_grpo import train_grpo
    from engine.protocol import GRPOConfig

    train_grpo(["Say yes.", "Name a colour.", "Count to three."], "length", f"{out}/grpo-{state.num_processes}",
               model_dir, GRPOConfig(lr=1e-2, num_generations=3, prompts_per_step=2, max_new_tokens=6),
               LoRAConfig(r=4, alpha=8), steps=1, run=RunOptions(device="cpu", progress=False))
    torch.save(saved, f"{out}/rank{state.process_index}-of-{state.num_processes}.pt")
''')


@pytest.fixture(scope="module")
def launched(tiny_model_dir, tmp_path_factory) -> Path:
    """Run SCRIPT once under torchrun with two processes and once alone; their saved weights."""
    out = tmp_path_factory.mktemp("distributed")
    script = out / "fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # torchrun is what `accelerate launch --multi_gpu` runs underneath; on a CPU-only machine
    # accelerate's own launcher starts a single process.
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    for command in (launch, [sys.executable]):
        done = subprocess.run([*command, str(script), str(tiny_model_dir), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    import torch

    return {"folder": out, **{name: torch.load(out / f"{name}.pt") for name in ("rank0-of-2", "rank1-of-2", "rank0-of-1")}}


def assert_ranks_agree(ranks: list[dict], single: dict | None) -> None:
    import torch

    moved = False
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"ranks disagree on {key}"
        if single is not None:
            torch.testing.assert_close(ranks[0][key], single[key], atol=1e-5, rtol=1e-4)
        moved |= bool((ranks[0][key] != 0).any()) and "lora_B" in key
    assert moved, "the step changed no LoRA B weight"


@pytest.mark.parametrize("method", ["dpo", "rm"])
def test_two_processes_average_gradients(launched, method):
    ranks = [launched["rank0-of-2"][method], launched["rank1-of-2"][method]]
    single = launched["rank0-of-1"][method]
    assert ranks[0].keys() == single.keys()
    if method == "rm":  # the score head trains with the adapter
        assert any("score" in key for key in single)
    assert_ranks_agree(ranks, single)


def test_checkpoints_come_from_the_main_process_only(launched):
    """Written once, by the main process, with the same adapter as the ranks ended with."""
    import torch
    from safetensors.torch import load_file

    for processes in (1, 2):
        run = launched["folder"] / f"run-of-{processes}"
        assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth"} <= {p.name for p in (run / "checkpoint-1").iterdir()}
    saved = load_file(launched["folder"] / "run-of-2" / "checkpoint-1" / "adapter_model.safetensors")
    ranks = launched["rank0-of-2"]["dpo"]
    assert saved.keys() == ranks.keys()
    assert all(torch.equal(saved[key], ranks[key]) for key in saved)


def test_ppo_ranks_roll_out_their_own_replies_and_agree(launched):
    ranks = [launched["rank0-of-2"], launched["rank1-of-2"]]
    assert ranks[0]["ppo_sample"] != ranks[1]["ppo_sample"], "both ranks rolled out the same reply"
    assert any(key.startswith("value_head.") for key in ranks[0]["ppo"])
    assert_ranks_agree([r["ppo"] for r in ranks], None)


@pytest.mark.parametrize("method", ["ppo", "rm"])
def test_headless_train_runs_launched_and_writes_once(launched, method):
    folder = launched["folder"] / f"{method}-out"
    assert (folder / "adapter_model.safetensors").exists() and (folder / "metadata.json").exists()
    assert not folder.with_name(folder.name + ".partial").exists()
    if method == "ppo":
        assert (folder / "value_head.safetensors").exists()


def test_grpo_two_processes_equal_one(launched):
    """`train grpo`'s function under two gloo processes: each generates half the step's groups, the dapo
    normaliser counts both processes' tokens, so the adapter equals that of one process taking every group."""
    import torch
    from safetensors.torch import load_file

    folder = launched["folder"]
    two, one = (load_file(folder / f"grpo-{n}" / "adapter_model.safetensors") for n in (2, 1))
    assert two.keys() == one.keys() and not (folder / "grpo-2.partial").exists()
    moved = False
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
        moved |= bool((one[key] != 0).any()) and "lora_B" in key
    assert moved, "the step changed no LoRA B weight"


KTO_SCRIPT = textwrap.dedent('''
    import json, sys, torch
    from engine.models import LoRAConfig, add_lora, load_model
    from engine.trainers import KTOTrainer, TrainConfig, kto
    from engine.trainers.base import process_state
    from engine.versions import adapter_state

    model_dir, out = sys.argv[1], sys.argv[2]
    state = process_state()
    torch.manual_seed(0)
    base, tokenizer = load_model(model_dir, device="cpu")
    policy = add_lora(base, LoRAConfig(r=4, alpha=8))
    rows = [{"prompt": f"Question {i}?", "completion": "Yes." if i % 2 else f"No, {i} times no.", "label": bool(i % 2)}
            for i in range(8)]
    seen = {"own": [], "used": []}  # this rank's KL estimate, and the one its loss used
    own, loss = kto.kto_kl, kto.kto_loss
    kto.kto_kl = lambda *a: seen["own"].append(own(*a).item()) or own(*a)
    kto.kto_loss = lambda p, r, d, kl, *a: seen["used"].append(kl.item()) or loss(p, r, d, kl, *a)
    trainer = KTOTrainer(policy, tokenizer, TrainConfig(lr=1e-2, batch_size=2, max_steps=3, shuffle=False))
    trainer.fit(rows, progress=False)
    torch.save(adapter_state(trainer.model), f"{out}/kto-rank{state.process_index}.pt")
    with open(f"{out}/kto-rank{state.process_index}.json", "w") as f:
        json.dump(seen, f)
''')


def test_kto_under_two_processes(tiny_model_dir, tmp_path):
    """`train kto`'s fit under two launched processes: one adapter, and one KL reference point (averaged
    over the ranks, as TRL gathers it) though each rank's batch has its own mismatched pairs."""
    import json

    import torch

    script = tmp_path / "kto.py"
    script.write_text(KTO_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(tiny_model_dir), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"kto-rank{r}.pt") for r in (0, 1)]
    kls = [json.loads((tmp_path / f"kto-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    assert any(bool((ranks[0][key] != 0).any()) for key in ranks[0] if "lora_B" in key)
    assert len(kls[0]["used"]) == 3 and kls[0]["used"] == kls[1]["used"]
    assert kls[0]["own"][1:] != kls[1]["own"][1:]  # the ranks' batches differ (at step 1 the policy is the reference)
    for step in range(3):
        assert kls[0]["used"][step] == pytest.approx((kls[0]["own"][step] + kls[1]["own"][step]) / 2, abs=1e-6)
