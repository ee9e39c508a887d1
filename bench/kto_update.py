"""One round's marks -> one KTO update on the default model: ours against TRL's KTOTrainer.

A KTO round in chat-train marks two candidates, one `+` and one `-`; with the default
`--update-every 2` those two rows make the update. Ours: `KTOTrainer.step(rows)` on a
trainer built once (the live loop), with the reference pass inside the step (the live loop
does not score KTO rows ahead: every new row's reference and mismatched pair are new).
TRL: what a TRL user must do for the same update: build a `KTOTrainer` on the two-row
dataset and train one step (`max_steps=1`, batch 2: the KL pairs rotate within it), on the
model already loaded and wrapped with the same LoRA (r16, all-linear), matched (no gradient
checkpointing, no bf16 autocast) and with its defaults. The model and TRL's "ref" adapter
handling are update_latency.py's. Updates alternate; each round brings two new rows, the
same for every contender; medians are reported.

    flock /tmp/bench.lock .venv/bin/python bench/kto_update.py [--updates 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import torch

from dpo_throughput import synthetic_pairs  # bench/ is on sys.path when run as a script
from update_latency import trl_model


def marked_round(pair: dict) -> list[dict]:
    """A preference pair as the two marks of one round: the chosen reply +, the rejected one -."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


def ours_trainer(args):
    from engine.models import LoRAConfig, add_lora, load_model
    from engine.trainers import KTOTrainer, TrainConfig

    base, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    torch.manual_seed(0)
    model = add_lora(base, LoRAConfig(r=args.lora_r, alpha=2 * args.lora_r))
    return KTOTrainer(model, tokenizer, TrainConfig(lr=args.lr, beta=args.beta, max_length=args.max_length))


def trl_update(model, tokenizer, rows, args, defaults: bool) -> float:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    matched = {} if defaults else {"gradient_checkpointing": False, "bf16": False}
    started = time.perf_counter()
    config = KTOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-kto-"), per_device_train_batch_size=len(rows), max_steps=1,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=1, use_cpu=True, **matched,
    )
    trainer = KTOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - started
    if "ref" in model.peft_config:
        model.delete_adapter("ref")  # so the next update builds its own, as a fresh TRL run would
    model.set_adapter("default")
    if defaults:  # undo what TRL's defaults switched on, so they don't slow the next contender
        model.base_model.model.gradient_checkpointing_disable()
        model.disable_input_require_grads()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per contender")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled default model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--dtype", default="auto", help="weights: auto (bf16 for the default model on a bf16 CPU), float32, bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    rounds = iter([marked_round(pair) for pair in synthetic_pairs(args.updates + 2, seed=1)])
    trainer = ours_trainer(args)
    model, tokenizer = trl_model(args)
    trainer.step(next(rounds))  # warm-up, both sides: first-call allocations are not what we time
    trl_update(model, tokenizer, next(rounds), args, defaults=False)

    times = {"ours (cold reference)": [], "ours (reference cached)": [],
             "TRL matched (no ckpt, no autocast)": [], "TRL defaults (grad ckpt, bf16 autocast)": []}
    for i in range(args.updates):
        rows = next(rounds)  # every contender gets these same rows: their length sets the cost
        trainer.reference_cache.clear()
        times["ours (cold reference)"].append(trainer.step(rows)["seconds"])
        times["ours (reference cached)"].append(trainer.step(rows)["seconds"])  # a later window holding them
        times["TRL matched (no ckpt, no autocast)"].append(trl_update(model, tokenizer, rows, args, defaults=False))
        times["TRL defaults (grad ckpt, bf16 autocast)"].append(trl_update(model, tokenizer, rows, args, defaults=True))
        print(f"update {i + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.updates} updates, "
          f"two marked replies each (max_length {args.max_length}, LoRA r{args.lora_r} all-linear, weights --dtype {args.dtype})")
    for k, v in median.items():
        print(f"  {k:40s} {v:6.2f} s")
    for ours in ("ours (cold reference)", "ours (reference cached)"):
        for trl in ("TRL matched (no ckpt, no autocast)", "TRL defaults (grad ckpt, bf16 autocast)"):
            print(f"{ours} / {trl}: {median[ours] / median[trl]:.2f}x")


if __name__ == "__main__":
    main()
