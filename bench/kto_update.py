"""One round's marks -> one KTO update on the default model: ours against TRL's KTOTrainer.

A KTO round in chat-train marks two candidates, one `+` and one `-`; with the default
`--update-every 2` those two rows make the update. Ours: `KTOTrainer.step(rows)` on a
trainer built once (the live loop), with the reference pass inside the step (the live loop
does not score KTO rows ahead: every new row's reference and mismatched pair are new).
TRL: what a TRL user must do for the same update: build a `KTOTrainer` on the two-row
dataset and train one step (`max_steps=1`, batch 2: the KL pairs rotate within it), on the
model already loaded and wrapped with the same LoRA (r16, all-linear), matched (no gradient
checkpointing, no bf16 autocast) and with its defaults. The model and TRL's "ref" adapter
handling are bench/trl_race.py's, as in update_latency.py. Updates alternate; each round brings two new rows, the
same for every contender; medians are reported.

    flock /tmp/bench.lock .venv/bin/python bench/kto_update.py [--updates 3]
"""

from __future__ import annotations

import argparse

from trl_race import TRL_DEFAULTS, TRL_MATCHED, add_options, our_policy, parse, race, report, synthetic_pairs, trl_policy, trl_update


def marked_round(pair: dict) -> list[dict]:
    """A preference pair as the two marks of one round: the chosen reply +, the rejected one -."""
    return [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per contender")
    add_options(parser)
    args = parse(parser)
    from trl import KTOConfig
    from trl import KTOTrainer as TRLKTOTrainer

    from engine.trainers import KTOTrainer, TrainConfig

    model, tokenizer = our_policy(args)
    trainer = KTOTrainer(model, tokenizer, TrainConfig(lr=args.lr, beta=args.beta, max_length=args.max_length))
    trl_model, trl_tokenizer = trl_policy(args)

    def cold(rows) -> float:
        trainer.reference_cache.clear()
        return trainer.step(rows)["seconds"]

    def trl(defaults: bool):
        return lambda rows: trl_update(trl_model, trl_tokenizer, rows, args, defaults, KTOConfig, TRLKTOTrainer)

    median = race(map(marked_round, synthetic_pairs(args.updates + 2, seed=1)), args.updates,
                  warm_ups=[trainer.step, trl(False)],
                  contenders={"ours (cold reference)": cold,
                              "ours (reference cached)": lambda rows: trainer.step(rows)["seconds"],  # a later window holding them
                              TRL_MATCHED: trl(False), TRL_DEFAULTS: trl(True)})
    report(median, ("ours (cold reference)", "ours (reference cached)"), "two marked replies each", args)


if __name__ == "__main__":
    main()
