"""A live DPO update over a window of pairs, in one pass or in parts: time and peak memory.

The live engine computes a step `batch_size` pairs at a time (engine.trainers.base.Step):
the same gradient as one pass. This measures what that costs and saves on the default
model: each part size runs in its own process (peak RSS is per process), with the window's
reference log-probs computed first, as the live loop has them by the time it updates.

    flock /tmp/bench.lock .venv/bin/python bench/update_parts.py [--pairs 12] [--sizes 12,4,2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from trl_race import add_options, our_policy, parse, synthetic_pairs


def measure(args) -> dict:
    """In this process: `--steps` live steps on `--pairs` pairs in parts of `--part` pairs."""
    from engine.trainers import DPOTrainer, TrainConfig
    from engine.trainers.base import Step

    from engine.live import TRAIN_ATTENTION
    from engine.logprobs import causal_lm

    model, tokenizer = our_policy(args)
    causal_lm(model).set_attn_implementation(TRAIN_ATTENTION["cpu"])  # as the live engine trains on a CPU
    config = TrainConfig(lr=args.lr, beta=args.beta, max_length=args.max_length, batch_size=args.part,
                         loss_type=["sigmoid", "sft"])
    trainer = DPOTrainer(model, tokenizer, config)
    rows = synthetic_pairs(args.pairs, seed=1)
    trainer.reference_logps(rows)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        update = Step(trainer, rows)
        while not update.finished:
            update.next_part()
        metrics = update.apply()
        seconds.append(time.perf_counter() - started)
    return {"part": args.part, "parts": len(update.parts), "median_s": statistics.median(seconds[1:] or seconds),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_steps_gb": before / 2**20, "loss": metrics["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="pairs in the update's window")
    parser.add_argument("--sizes", default="12,4,2", help="part sizes to compare (pairs per forward pass)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per size (the first is a warm-up)")
    parser.add_argument("--part", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    add_options(parser)
    args = parse(parser)
    if args.part is not None:
        print(json.dumps(measure(args)))
        return
    print(f"{args.pairs} pairs, {args.steps} steps per size, dtype {args.dtype}")
    print(f"{'part':>5} {'parts':>5} {'step s':>8} {'peak RSS GB':>12} {'loss':>9}")
    for size in map(int, args.sizes.split(",")):
        child = [sys.executable, __file__, *sys.argv[1:], "--part", str(size)]
        out = subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"{r['part']:>5} {r['parts']:>5} {r['median_s']:>8.2f} {r['peak_rss_gb']:>12.2f} {r['loss']:>9.5f}")


if __name__ == "__main__":
    main()
