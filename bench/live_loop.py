"""The live loop through the engine process, against its goals (DESIGN.md) and TRL.

Measures, on one machine in one run:
  - engine start-up: spawn to the ready line (goal < 5 s with the default model cached);
  - generation: time to first token and tokens/s for n=1 and n=2 (goal: n=2 <= 1.2x n=1);
  - one rating to a new version: a 1-pair DPO update (RPO, the live default) with the
    reference log-probs precomputed by score_reference, measured from the client
    (request to `done`, the version saved); also with 8 pairs for reference;
  - TRL's cost for the same single-pair update: build trl.DPOTrainer on a one-row
    datasets.Dataset with the same LoRA config (r16, alpha 32, all linear layers) and
    the same objective (sigmoid + sft, weights 1/1 = rpo_alpha 1.0), train one step,
    on the same weights (dtype auto: bfloat16 on a CPU with native bf16). TRL runs with
    the engine's thread count and with torch's default; its faster time is the one
    compared. Goal: ours <= 0.3x TRL.

Run it alone: flock /tmp/bench.lock .venv/bin/python bench/live_loop.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The same OpenMP setting for TRL (in this process) as the engine sets for itself: fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tui_align.client import EngineClient  # noqa: E402

STORY = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]
QUESTIONS = ["What is the capital of France?", "Give me a tip for sleeping better.", "Why is the sky blue?",
             "Name three fruits.", "How do I boil an egg?", "What is a prime number?", "Say something kind.",
             "What is 12 times 12?"]


def median(values):
    return statistics.median(values) if values else float("nan")


async def startup(args) -> tuple[EngineClient, list[float]]:
    times = []
    for i in range(args.starts):
        client = EngineClient(model=args.model, device=args.device, dtype=args.dtype)
        await client.start()
        times.append(client.ready_seconds)
        if i < args.starts - 1:
            await client.close()
    return client, times


async def generation(client: EngineClient, args) -> dict:
    async def one(n, seed):
        async for event in client.generate(STORY, n=n, max_new_tokens=args.max_new_tokens, seed=seed):
            if event["type"] == "done":
                return event

    await one(2, 0)  # warm-up
    runs = {1: [], 2: []}
    for seed in range(1, args.repeats + 1):  # n=1 and n=2 alternate: drift in machine load hits both
        for n in (1, 2):
            runs[n].append(await one(n, seed))
    out = {}
    for n in (1, 2):
        steps = [max(c["tokens"] for c in r["candidates"]) for r in runs[n]]
        out[n] = {
            "ttft_s": median([r["candidates"][0]["ttft_s"] for r in runs[n]]),
            "seconds": median([r["seconds"] for r in runs[n]]),
            "ms_per_step": median([1000 * r["seconds"] / s for r, s in zip(runs[n], steps)]),
            "tokens_per_s": median([sum(c["tokens"] for c in r["candidates"]) / r["seconds"] for r in runs[n]]),
            "all_full_length": all(s == args.max_new_tokens for s in steps),
        }
    return out


async def pairs(client: EngineClient, count: int, seed: int) -> list[dict]:
    rows = []
    for i in range(count):
        messages = [{"role": "user", "content": QUESTIONS[(seed + i) % len(QUESTIONS)]}]
        async for event in client.generate(messages, n=2, max_new_tokens=48, seed=seed * 100 + i):
            if event["type"] == "done":
                a, b = (c["text"] or "..." for c in event["candidates"])
                rows.append({"prompt": messages, "chosen": a, "rejected": b})
    return rows


async def rating_latency(client: EngineClient, args) -> dict:
    one, eight, reference = [], [], []
    window: list[dict] = []
    for round_ in range(args.repeats):
        rows = await pairs(client, 1, round_)
        started = time.perf_counter()
        scored = await client.score_reference(rows)  # sent while the person reads
        reference.append(time.perf_counter() - started)
        window = (window + scored)[-8:]
        started = time.perf_counter()
        await client.update("dpo", scored)
        one.append(time.perf_counter() - started)
    window += await client.score_reference(await pairs(client, max(0, 8 - len(window)), 99))
    for _ in range(max(2, args.repeats // 2)):
        started = time.perf_counter()
        await client.update("dpo", window[-8:])
        eight.append(time.perf_counter() - started)
    return {"one_pair_s": median(one), "one_pair_all": one, "eight_pairs_s": median(eight),
            "reference_s": median(reference), "first_pair": rows[0]}


def trl_one_pair(pair: dict, args, defaults: bool, threads: int) -> float:
    """Seconds to build TRL's DPOTrainer on one row and train one step (model already loaded)."""
    import torch

    torch.set_num_threads(threads)
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from engine.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    row = {"prompt": pair["prompt"], "chosen": [{"role": "assistant", "content": pair["chosen"]}],
           "rejected": [{"role": "assistant", "content": pair["rejected"]}]}
    matched = {} if defaults else {"gradient_checkpointing": False, "bf16": False}
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        matched["bf16"] = False  # TRL's bf16 default refuses to run on a CPU
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-live-"), per_device_train_batch_size=1, max_steps=1,
        learning_rate=2e-4, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
        max_length=512, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=args.device == "cpu", seed=0, **matched)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    started = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list([row]),
                         processing_class=tokenizer, peft_config=lora)
    trainer.train()
    return time.perf_counter() - started


async def engine_part(args) -> dict:
    client, starts = await startup(args)
    try:
        info = client.info
        gen = await generation(client, args)
        rating = await rating_latency(client, args)
    finally:
        await client.close()
    return {"info": info, "starts": starts, "gen": gen, "rating": rating}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3, help="engine start-ups to time")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trl-runs", type=int, default=2, help="TRL one-pair updates to time (0: skip TRL)")
    args = parser.parse_args()

    result = asyncio.run(engine_part(args))
    info, gen, rating = result["info"], result["gen"], result["rating"]
    print(f"model {info['model']} on {info['device']} ({info['dtype']}), {info['parameters'] / 1e6:.0f}M parameters")
    print(f"engine start-up to ready: {', '.join(f'{s:.2f}' for s in result['starts'])} s "
          f"(median {median(result['starts']):.2f} s; goal < 5 s)")
    for n in (1, 2):
        g = gen[n]
        print(f"generate n={n}: ttft {1000 * g['ttft_s']:.0f} ms, {g['ms_per_step']:.1f} ms/step, "
              f"{g['tokens_per_s']:.1f} tokens/s in all, {g['seconds']:.2f} s for {args.max_new_tokens} tokens"
              f"{'' if g['all_full_length'] else ' (some candidates stopped early)'}")
    ratio = gen[2]["ms_per_step"] / gen[1]["ms_per_step"]
    print(f"n=2 / n=1 time per step: {ratio:.2f}x (goal <= 1.2x)")
    print(f"reference log-probs (score_reference, 1 pair, while the person reads): {1000 * rating['reference_s']:.0f} ms")
    print(f"rating -> new version, 1 pair: median {rating['one_pair_s']:.3f} s "
          f"({', '.join(f'{s:.3f}' for s in rating['one_pair_all'])}); 8 pairs: {rating['eight_pairs_s']:.3f} s")
    import torch

    thread_counts = sorted({info.get("threads") or torch.get_num_threads(), torch.get_num_threads()})
    for defaults in (False, True):
        name = "TRL defaults (grad ckpt)" if defaults else "TRL matched (no grad ckpt)"
        best = float("inf")
        for threads in thread_counts:
            runs = [trl_one_pair(rating["first_pair"], args, defaults, threads) for _ in range(args.trl_runs)]
            if runs:
                best = min(best, median(runs))
                print(f"{name}, {threads} thread(s): build DPOTrainer on 1 row + 1 step: "
                      f"{', '.join(f'{s:.2f}' for s in runs)} s")
        if best < float("inf"):
            print(f"{name}: ours / TRL's faster = {rating['one_pair_s']:.3f} / {best:.3f} = "
                  f"{rating['one_pair_s'] / best:.3f} (goal <= 0.3)")


if __name__ == "__main__":
    main()
