"""A decoding step through engine/lora_decode.py's direct LoRA forward against one through PEFT's.

Two generations of the same random 135M-sized model (bench/scale.py's, LoRA r16 on every
linear layer as the engine adds it) step in turn, one with the direct forward and one
without, so that a machine whose load drifts slows both alike; the tokens must come out the
same (the products are the same operations). Prints the median ms per step of each, for
n = 1 and n = 8.

    .venv/bin/python bench/lora_decode.py --size 135m --tokens 48
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="135m", help="a bench/scale.py size")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per candidate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the engine's default here: 1)")
    args = parser.parse_args()

    import torch

    import scale
    from engine.generation import Generation
    from engine.models import LoRAConfig, add_lora, load_model, load_tokenizer

    if args.size not in scale.SIZES:
        parser.error(f"--size {args.size}: choose from {', '.join(scale.SIZES)}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tui-align-lora-decode-") as root:
        folder = scale.build(args.size, Path(root) / args.size, torch.float32, load_tokenizer(None))
        base, tokenizer = load_model(str(folder), device="cpu", dtype="float32")
    torch.manual_seed(0)
    policy = add_lora(base, LoRAConfig())
    policy.eval()
    print(f"{args.size}, float32, {args.threads} thread(s), {args.tokens} new tokens")
    for n in (1, 8):
        runs = {"PEFT": Generation(policy, tokenizer, scale.PROMPT, n=n, max_new_tokens=args.tokens, seed=1),
                "direct": Generation(policy, tokenizer, scale.PROMPT, n=n, max_new_tokens=args.tokens, seed=1)}
        runs["PEFT"].lora_layers = []  # PEFT's own forward every step
        times = {name: [] for name in runs}
        while not all(gen.done for gen in runs.values()):
            for name, gen in runs.items():
                if not gen.done:
                    started = time.perf_counter()
                    next(gen)
                    times[name].append(time.perf_counter() - started)
        same = [c.tokens for c in runs["PEFT"].candidates] == [c.tokens for c in runs["direct"].candidates]
        peft, direct = (1000 * statistics.median(times[name][1:]) for name in ("PEFT", "direct"))  # [0]: the prefill
        print(f"n={n}: PEFT {peft:.1f} ms/step, direct {direct:.1f} ms/step ({direct / peft:.2f}x), "
              f"same tokens: {same}", flush=True)


if __name__ == "__main__":
    main()
