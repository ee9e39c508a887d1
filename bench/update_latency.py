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
every contender (its length sets the cost); medians are reported (bench/trl_race.py).

    flock /tmp/bench.lock .venv/bin/python bench/update_latency.py [--updates 3]
"""

from __future__ import annotations

import argparse
import time

from trl_race import TRL_DEFAULTS, TRL_MATCHED, add_options, our_policy, parse, race, report, synthetic_pairs, trl_policy, trl_update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per contender")
    add_options(parser)
    args = parse(parser)
    from trl import DPOConfig
    from trl import DPOTrainer as TRLDPOTrainer

    from engine.trainers import DPOTrainer, TrainConfig

    model, tokenizer = our_policy(args)
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=args.lr, beta=args.beta, batch_size=1, max_length=args.max_length))
    trl_model, trl_tokenizer = trl_policy(args)
    reference = {}

    def reference_pass(rows) -> float:
        started = time.perf_counter()
        (reference["chosen"], reference["rejected"]), = trainer.reference_logps(rows)
        return time.perf_counter() - started

    def precomputed(rows) -> float:
        return trainer.step([{**rows[0], "ref_chosen_logps": reference["chosen"],
                              "ref_rejected_logps": reference["rejected"]}])["seconds"]

    def cold(rows) -> float:
        trainer.reference_cache.clear()  # cold: the step computes the reference itself
        return trainer.step(rows)["seconds"]

    def trl(defaults: bool):
        return lambda rows: trl_update(trl_model, trl_tokenizer, rows, args, defaults, DPOConfig, TRLDPOTrainer)

    median = race(([pair] for pair in synthetic_pairs(args.updates + 2, seed=1)), args.updates,
                  warm_ups=[trainer.step, trl(False)],
                  contenders={"ours: reference pass": reference_pass, "ours (precomputed ref)": precomputed,
                              "ours (cold)": cold, TRL_MATCHED: trl(False), TRL_DEFAULTS: trl(True)})
    report(median, ("ours (precomputed ref)", "ours (cold)"), "one pair each", args)


if __name__ == "__main__":
    main()
