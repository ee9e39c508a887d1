"""Batch DPO throughput: tui-align's DPOTrainer.fit against TRL's DPOTrainer.train.

Same default model (SmolLM2-135M-Instruct, float32), same conversational preference rows,
same fresh LoRA adapter (r16, alpha 32, all-linear, no dropout, same seed, so the same A
matrices), same batch size, max length, learning rate (constant), beta and number of steps;
rows in file order in both (TRL's "sequential" sampler, ours shuffle=False) so both see the
same batches. The runs alternate in one process. TRL runs with its own defaults (gradient
checkpointing on, bf16 autocast, as DPOConfig sets them) and matched to ours (no
checkpointing, float32).

A fresh adapter has B = 0, so step 1's loss is log(2) in both; the step-1 gradient norm and
the step-2 loss (after one identical AdamW update) are the real check that both compute the
same thing.

    flock /tmp/bench.lock .venv/bin/python bench/dpo_throughput.py [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

from trl_race import TRL_DEFAULTS, TRL_MATCHED, add_options, our_policy, parse, synthetic_pairs  # first: it quiets the libraries

import torch  # noqa: E402


def run_ours(rows, args) -> dict:
    from engine.trainers import DPOTrainer, TrainConfig

    model, tokenizer = our_policy(args)
    config = TrainConfig(lr=args.lr, beta=args.beta, batch_size=args.batch_size, max_length=args.max_length,
                         max_steps=args.steps, shuffle=False, seed=0)
    stamps, losses, grad_norms = [], [], []
    started = time.perf_counter()
    trainer = DPOTrainer(model, tokenizer, config)

    def on_step(metrics):
        stamps.append(time.perf_counter())
        losses.append(metrics["loss"])
        grad_norms.append(metrics["grad_norm"])

    trainer.fit(rows, progress=False, on_step=on_step)
    return summarize("ours", started, stamps, losses, grad_norms, args)


def run_trl(rows, args, defaults: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from engine.models import load_model

    model, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    stamps, losses, grad_norms = [], [], []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            stamps.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
                grad_norms.append(logs["grad_norm"])

    matched = {} if defaults else {"gradient_checkpointing": False, "bf16": False}
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, max_steps=args.steps, learning_rate=args.lr, beta=args.beta,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=0, use_cpu=True, **matched,
    )
    started = time.perf_counter()
    torch.manual_seed(0)  # the adapter TRL creates gets the same initial weights as ours
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    name = TRL_DEFAULTS if defaults else TRL_MATCHED
    return summarize(name, started, stamps, losses, grad_norms, args)


def summarize(name, started, stamps, losses, grad_norms, args) -> dict:
    pairs = args.steps * args.batch_size
    steady = (len(stamps) - 1) * args.batch_size / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return {"name": name, "losses": losses, "grad_norm_1": grad_norms[0], "seconds": stamps[-1] - started,
            "pairs_per_s": pairs / (stamps[-1] - started), "steady_pairs_per_s": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    add_options(parser)
    parser.add_argument("--no-trl-defaults", action="store_true", help="skip TRL with its own defaults")
    args = parse(parser)

    rows = synthetic_pairs(args.rows)
    runners = [("ours", lambda: run_ours(rows, args)), ("trl", lambda: run_trl(rows, args, defaults=False))]
    if not args.no_trl_defaults:
        runners.append(("trl-defaults", lambda: run_trl(rows, args, defaults=True)))
    results: dict[str, list[dict]] = {key: [] for key, _ in runners}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.rows} rows, {args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, "
          f"LoRA r{args.lora_r} all-linear, weights --dtype {args.dtype}")
    for round_ in range(args.rounds):
        order = runners if round_ % 2 == 0 else runners[::-1]  # alternate who goes first
        for key, run in order:
            result = run()
            results[key].append(result)
            print(f"round {round_ + 1} {result['name']:32s} {result['seconds']:7.1f} s  "
                  f"{result['pairs_per_s']:.3f} pairs/s (steady {result['steady_pairs_per_s']:.3f})  "
                  f"step-1 grad norm {result['grad_norm_1']:.4f}  losses "
                  + " ".join(f"{x:.4f}" for x in result["losses"]), flush=True)
            gc.collect()

    def median(key, field):
        return statistics.median(r[field] for r in results[key])

    ours, trl = results["ours"][0], results["trl"][0]
    for label, a, b in [("step-1 loss", ours["losses"][0], trl["losses"][0]),
                        ("step-1 grad norm", ours["grad_norm_1"], trl["grad_norm_1"]),
                        ("step-2 loss", ours["losses"][1], trl["losses"][1])]:
        verdict = "agree" if abs(a - b) < 1e-3 else "DISAGREE"
        print(f"{label}: ours {a:.6f}  TRL matched {b:.6f}  |diff| {abs(a - b):.1e} ({verdict} to 1e-3)")
    for key in results:
        if key == "ours":
            continue
        print(f"throughput ratio ours/{results[key][0]['name']}: "
              f"{median('ours', 'pairs_per_s') / median(key, 'pairs_per_s'):.2f}x end-to-end, "
              f"{median('ours', 'steady_pairs_per_s') / median(key, 'steady_pairs_per_s'):.2f}x steady-state")


if __name__ == "__main__":
    main()
