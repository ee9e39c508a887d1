"""What the benchmarks that race our trainers against TRL's share: the options, the rows, the
LoRA-wrapped model on each side, TRL's one-step update and the alternating timed updates.

Imported first by dpo_throughput.py, update_latency.py and kto_update.py (bench/ is on sys.path
when they run as scripts): it quiets the libraries before torch loads.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

TRL_MATCHED = "TRL matched (no ckpt, no autocast)"
TRL_DEFAULTS = "TRL defaults (grad ckpt, bf16 autocast)"
WORDS = (
    "the model should answer clearly and briefly when a person asks about history science cooking travel "
    "music code weather health money books films sport language maths because good replies explain why "
    "each step matters while bad replies wander repeat themselves or refuse without reason so we prefer "
    "short useful answers that finish their sentences and stay polite even if the question is vague or "
    "long the user might want examples lists numbers dates names places a recipe a plan or a summary of "
    "what happened yesterday in the city near the river where people walk their dogs every morning"
).split()


# --- options ----------------------------------------------------------------------------

def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of every race, with the same defaults in each."""
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--model", default=None, help="model folder (default: the bundled default model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--dtype", default="auto", help="weights: auto (bf16 for the default model on a bf16 CPU), float32, bfloat16")


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return args


# --- rows -------------------------------------------------------------------------------

def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, words: int) -> str:
    parts, left = [], words
    while left > 0:
        n = min(left, rng.randint(6, 16))
        parts.append(sentence(rng, n))
        left -= n
    return " ".join(parts)


def synthetic_pairs(n: int = 64, seed: int = 0) -> list[dict]:
    """Conversational preference rows of chat-like length (prompts ~20-120 words, replies ~15-110)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = paragraph(rng, rng.randint(20, 120))
        rows.append({
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": paragraph(rng, rng.randint(15, 80))}],
            "rejected": [{"role": "assistant", "content": paragraph(rng, rng.randint(25, 110))}],
        })
    return rows


# --- the two sides ----------------------------------------------------------------------

def our_policy(args):
    """(model, tokenizer): the model with our LoRA adapter (r, alpha 2r, all-linear), seeded."""
    from engine.models import LoRAConfig, add_lora, load_model

    base, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    torch.manual_seed(0)
    return add_lora(base, LoRAConfig(r=args.lora_r, alpha=2 * args.lora_r)), tokenizer


def trl_policy(args):
    """(model, tokenizer): the model wrapped by peft as a TRL user would, with the same adapter."""
    from peft import LoraConfig, get_peft_model

    from engine.models import load_model

    base, tokenizer = load_model(args.model, device="cpu", dtype=args.dtype)
    torch.manual_seed(0)
    config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(base, config), tokenizer


def trl_update(model, tokenizer, rows: list[dict], args, defaults: bool, config_class, trainer_class) -> float:
    """Seconds for what a TRL user must do for one update on `rows`: build the trainer, train one step
    (batch: all the rows), with TRL's defaults or matched to ours (no checkpointing, no autocast)."""
    from datasets import Dataset

    matched = {} if defaults else {"gradient_checkpointing": False, "bf16": False}
    started = time.perf_counter()
    config = config_class(
        output_dir=tempfile.mkdtemp(prefix="trl-race-"), per_device_train_batch_size=len(rows), max_steps=1,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, save_strategy="no", report_to="none",
        disable_tqdm=True, logging_steps=1, use_cpu=True, **matched,
    )
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    seconds = time.perf_counter() - started
    if "ref" in model.peft_config:  # TRL copies a PeftModel's adapter as its reference
        model.delete_adapter("ref")  # so the next update builds its own, as a fresh TRL run would
    model.set_adapter("default")
    if defaults:  # undo what TRL's defaults switched on, so they don't slow the next contender
        model.base_model.model.gradient_checkpointing_disable()
        model.disable_input_require_grads()
    return seconds


# --- the race ---------------------------------------------------------------------------

def race(batches, updates: int, warm_ups, contenders: dict) -> dict[str, float]:
    """Median seconds of each contender (name -> run(rows) -> seconds) over `updates` batches.

    Each warm-up takes a batch of its own first (first-call allocations are not what we time);
    then the contenders alternate, in order, on each batch: its length sets the cost.
    """
    batches = iter(batches)
    for warm_up in warm_ups:
        warm_up(next(batches))
    times = {name: [] for name in contenders}
    for i in range(updates):
        rows = next(batches)
        for name, run in contenders.items():
            times[name].append(run(rows))
        print(f"update {i + 1}: " + "  ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    return {name: statistics.median(v) for name, v in times.items()}


def report(median: dict[str, float], ours: tuple[str, ...], what: str, args) -> None:
    """The medians, then each of ours against each TRL contender."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.updates} updates, "
          f"{what} (max_length {args.max_length}, LoRA r{args.lora_r} all-linear, weights --dtype {args.dtype})")
    width = max(map(len, median))
    for name, seconds in median.items():
        print(f"  {name:{width}s} {seconds:6.2f} s")
    for mine in ours:
        for trl in (TRL_MATCHED, TRL_DEFAULTS):
            print(f"{mine} / {trl}: {median[mine] / median[trl]:.2f}x")
