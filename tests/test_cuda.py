"""The CUDA path, in bfloat16: generation, a live update, PPO and the engine process on a GPU.

Skipped where torch sees no CUDA device (tests/conftest.py); bench/gpu.sh runs them on a lent GPU.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.cuda

PAIR = {"prompt": [{"role": "user", "content": "Say yes."}], "chosen": "Yes, of course.", "rejected": "No."}
HI = [{"role": "user", "content": "Hi"}]


def cuda_policy(model_dir):
    from engine.models import LoRAConfig, add_lora, load_model

    torch.manual_seed(0)
    base, tokenizer = load_model(str(model_dir), device="cuda", dtype="bfloat16")
    return add_lora(base, LoRAConfig(r=8, alpha=16)), tokenizer


def test_generate_on_cuda_in_bf16_is_seeded(tiny_model_dir):
    from engine.generation import generate

    policy, tokenizer = cuda_policy(tiny_model_dir)
    assert next(policy.parameters()).device.type == "cuda"
    first = generate(policy, tokenizer, HI, n=4, max_new_tokens=12, seed=3)
    again = generate(policy, tokenizer, HI, n=4, max_new_tokens=12, seed=3)
    assert [c["text"] for c in first] == [c["text"] for c in again]
    assert all(c["tokens"] >= 1 and c["finish_reason"] in ("stop", "length") for c in first)


def test_a_live_update_on_cuda_in_bf16(tiny_model_dir, tmp_path):
    from engine.live import EngineOptions, LiveEngine

    engine = LiveEngine(EngineOptions(model=str(tiny_model_dir), device="cuda", dtype="bfloat16",
                                      session_dir=str(tmp_path)))
    assert engine.device.startswith("cuda") and engine.dtype == "bfloat16"
    assert all(v.dtype == torch.float32 and v.is_cuda for v in engine.saved.adapter.values())  # the adapter stays float32
    before = {k: v.clone() for k, v in engine.saved.adapter.items()}
    rows = engine.check_examples("dpo", [PAIR])
    job, events = SimpleNamespace(cancelled=threading.Event()), []
    for _ in engine.score_reference_job(job, rows, lambda kind, **payload: events.append((kind, payload))):
        pass
    scored = events[-1][1]["examples"]
    config, steps = engine.check_hyperparameters("dpo", {"steps": 2})
    for _ in engine.update_job(job, "dpo", scored, config, steps, lambda kind, **payload: events.append((kind, payload))):
        pass
    kind, done = events[-1]
    assert kind == "done" and done["version"] == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in done["metrics"].values() if isinstance(v, float))
    assert any(not torch.equal(before[k], engine.saved.adapter[k]) for k in before), "the update changed nothing"
    assert torch.cuda.max_memory_allocated() > 0


def test_a_ppo_step_on_cuda(tiny_model_dir):
    from engine.trainers.ppo import PPOConfig, PPOTrainer

    policy, tokenizer = cuda_policy(tiny_model_dir)
    trainer = PPOTrainer(policy, tokenizer, PPOConfig(mini_batch_size=2, ppo_epochs=1))
    assert next(trainer.value_head.parameters()).is_cuda
    metrics = trainer.step([[1, 2, 3], [4, 5]], [[6, 7, 8], [9]], [1.0, -1.0])
    assert all(value == value for value in metrics.values())  # no NaN


def test_the_engine_process_serves_on_cuda(tiny_model_dir, tmp_path):
    from tui_align.client import EngineClient

    async def session():
        client = EngineClient(model=str(tiny_model_dir), device="cuda", dtype="bfloat16", session_dir=tmp_path / "s")
        try:
            info = await client.start()
            tokens = []
            async for event in client.generate(HI, n=2, max_new_tokens=8, seed=0):
                tokens.append(event)
            scored = await client.score_reference([PAIR])
            update = await client.update("dpo", scored)
            status = await client.status()
        finally:
            await client.close()
        return info, tokens[-1], update, status

    info, done, update, status = asyncio.run(session())
    assert info["device"].startswith("cuda") and info["dtype"] == "bfloat16"
    assert len(done["candidates"]) == 2 and update["version"] == 1
    assert status["peak_accelerator_bytes"] > 0
