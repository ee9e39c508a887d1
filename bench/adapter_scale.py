"""What a session's final adapter does at other strengths: the blind win rate vs v0 on the held-out prompts
with the adapter's update scaled by s (s = 1: the version as trained; s > 1: extrapolated past it, as
"weak-to-strong extrapolation" (ExPO) does with a DPO model's weights; s < 1: part of the way).

    .venv/bin/python bench/adapter_scale.py --versions SESSION_FOLDER/versions --judge bench.judges.warm:judge
        [--scales 0.5,1,1.5,2] [--version N]

Every strength samples the same held-out prompts with the same seeds (EVAL_SAMPLES each, the loop's
sampling), in process (engine.generation, not the engine's server): v0 is s = 0. The judge's verdicts
are `simulate`'s (tui_align.heldout.compare), with the held-out finished fraction and degeneration
measures of each strength. A one-off probe of the loop's policy, not a test.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", required=True, help="a session's versions folder (v0000, v0001, ...)")
    parser.add_argument("--judge", required=True, help="package.module:function")
    parser.add_argument("--version", type=int, help="the version to scale (default: the newest)")
    parser.add_argument("--scales", default="0.5,1,1.5,2", help="comma-separated strengths (v0 is always run)")
    parser.add_argument("--seed", type=int, default=0, help="the comparison's shown-order seed (simulate's --seed)")
    args = parser.parse_args()

    import torch

    from engine import models, versions
    from engine.generation import generate
    from tui_align import degeneration
    from tui_align.cli.simulate import builtin_prompts
    from tui_align.heldout import EVAL_SAMPLES, Person, compare, messages
    from tui_align.judges import Reply
    from tui_align.loop import LoopConfig

    module, function = args.judge.split(":")
    person = Person(getattr(importlib.import_module(module), function), args.judge)
    cfg = LoopConfig(seed=args.seed)
    prompts = builtin_prompts("heldout.txt")[:16]  # simulate's --eval-prompts default
    number = args.version if args.version is not None else versions.list_versions(args.versions)[-1]

    model, tokenizer = models.load_model(None, device="cpu")
    model = models.add_lora(model, adapter_path=versions.version_dir(args.versions, number))
    model.eval()
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_B" in name}

    def replies_at(scale: float) -> list[list]:
        with torch.no_grad():  # lora_B scaled: the adapter's whole update (B A) scales with it
            for name, p in model.named_parameters():
                if name in trained:
                    p.copy_(trained[name] * scale)
            out = []
            for i, prompt in enumerate(prompts):
                done = generate(model, tokenizer, messages(cfg, prompt), n=EVAL_SAMPLES, seed=10_000_000 + i,
                                **cfg.sampling)
                out.append([Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in done])
        return out

    base = replies_at(0.0)
    print(f"v{number} of {args.versions}, judge {args.judge}, {len(prompts)} held-out prompts x {EVAL_SAMPLES}")
    for scale in [0.0] + [float(s) for s in args.scales.split(",")]:
        replies = base if scale == 0 else replies_at(scale)
        result = compare(cfg, person, prompts, replies, base)
        quality = degeneration.summary([r for rs in replies for r in rs])
        shared = degeneration.shared_ngrams([list(rs) for rs in replies])
        print(f"scale {scale:g}: {100 * result['win_rate']:.1f}% ({result['wins']}/{result['ties']}/{result['losses']}), "
              f"{100 * quality['finished']:.0f}% finished, repeated trigrams {100 * quality['repeated_3grams']:.1f}%, "
              f"distinct words {100 * quality['distinct_words']:.0f}%, shared trigrams {100 * shared:.1f}%", flush=True)
        for prompt, rs in list(zip(prompts, replies))[:3]:
            print(f"    {prompt!r}: {str(rs[0])[:100]!r}")


if __name__ == "__main__":
    main()
