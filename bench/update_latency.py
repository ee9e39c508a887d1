"""One new preference pair -> one DPO update on the default model: ours against TRL.

Ours: `DPOTrainer.step([pair])` on a trainer built once (the live loop), timed
  - "precomputed": with the pair's reference log-probs already computed (the live loop
    does that while the person reads; that pass is reported separately), and
  - "cold": with the reference pass inside the step.
TRL: what a TRL user must do for the same update: build a `DPOTrainer` on a one-row
  dataset and train one step (`max_steps=1`), on the model already loaded and wrapped with
  the same LoRA (r16, all-linear). Given a PeftModel, TRL copies the adapter as its "ref"
  adapter; that copy is removed after each update, outside the timing. TRL runs with its
  own defaults (gradient checkpointing, bf16 autocast) and matched to ours (neither).

Updates alternate between the contenders; each round brings a new pair, the same for
every contender (its length sets the cost); medians are reported.

    flock /tmp/bench.lock .venv/bin/python bench/update_latency.py [--updates 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from dpo_throughput import synthetic_pairs  # noqa: E402  (bench/ is on sys.path when run as a script)


def ours_trainer(args):
    from engine.models import LoRAConfig, add_lora, load_model
    from engine.trainers import DPOTrainer, TrainConfig

    base, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    torch.manual_seed(0)
    model = add_lora(base, LoRAConfig(r=args.lora_r, alpha=2 * args.lora_r))
    return DPOTrainer(model, tokenizer, TrainConfig(lr=args.lr, beta=args.beta, batch_size=1, max_length=args.max_length))


def trl_model(args):
    from peft import LoraConfig, get_peft_model

    from engine.models import load_model

    base, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    torch.manual_seed(0)
    config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(base, config), tokenizer


def trl_update(model, tokenizer, pair, args, defaults: bool) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    matched = {} if defaults else {"gradient_checkpointing": False, "bf16": False}
    started = time.perf_counter()
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-latency-"), per_device_train_batch_size=1, max_steps=1,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=1, use_cpu=True, **matched,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list([pair]), processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - started
    model.delete_adapter("ref")  # so the next update can build its own, as a fresh TRL run would
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

    pairs = iter(synthetic_pairs(args.updates + 2, seed=1))
    trainer = ours_trainer(args)
    model, tokenizer = trl_model(args)
    trainer.step([next(pairs)])  # warm-up, both sides: first-call allocations are not what we time
    trl_update(model, tokenizer, next(pairs), args, defaults=False)

    times = {"ours (precomputed ref)": [], "ours (cold)": [], "ours: reference pass": [],
             "TRL matched (no ckpt, no autocast)": [], "TRL defaults (grad ckpt, bf16 autocast)": []}
    for i in range(args.updates):
        pair = next(pairs)  # every contender gets this same pair: the cost depends on its length
        started = time.perf_counter()
        (chosen, rejected), = trainer.reference_logps([pair])
        times["ours: reference pass"].append(time.perf_counter() - started)
        metrics = trainer.step([{**pair, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}])
        times["ours (precomputed ref)"].append(metrics["seconds"])
        trainer.reference_cache.clear()  # cold: the step computes the reference itself
        times["ours (cold)"].append(trainer.step([pair])["seconds"])
        times["TRL matched (no ckpt, no autocast)"].append(trl_update(model, tokenizer, pair, args, defaults=False))
        times["TRL defaults (grad ckpt, bf16 autocast)"].append(trl_update(model, tokenizer, pair, args, defaults=True))
        print(f"update {i + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.updates} updates, "
          f"one pair each (max_length {args.max_length}, LoRA r{args.lora_r} all-linear, weights --dtype {args.dtype})")
    for k, v in median.items():
        print(f"  {k:34s} {v:6.2f} s")
    for ours in ("ours (precomputed ref)", "ours (cold)"):
        for trl in ("TRL matched (no ckpt, no autocast)", "TRL defaults (grad ckpt, bf16 autocast)"):
            print(f"{ours} / {trl}: {median[ours] / median[trl]:.2f}x")


if __name__ == "__main__":
    main()
