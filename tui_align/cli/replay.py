"""`tui-align replay NAME [NAME...]`: batch training on all the feedback of saved sessions.

The same trainer and flags as `tui-align train`, in this process (so `accelerate launch`
works); the rows come from the sessions instead of a file. Withdrawn feedback is left out.
"""

from __future__ import annotations

from pathlib import Path

import typer

from engine.protocol import GRPOConfig, TrainConfig
from tui_align.cli import train as t
from tui_align.cli.common import CONFIG, fail, user_errors
from tui_align.cli.sessions import SESSIONS_DIR

REPLAY_METHODS = ("dpo", "sft", "kto", "grpo")  # of engine.protocol.METHODS: those with a batch trainer over session rows
ROWS = {"dpo": "pairs", "sft": "demonstrations", "kto": "marked replies",
        "grpo": "scored groups"}  # what each method trains on, in words
OWN_OPTIONS = {"dpo": ("beta", "loss_type", "loss_weights", "label_smoothing", "discopop_tau", "rpo_alpha"),
               "kto": ("beta", "desirable_weight", "undesirable_weight"),
               "grpo": ("beta", "loss_type", "epsilon", "scale_rewards"),
               "sft": ()}  # the options only some methods have; one method's mean nothing to another
BETA = typer.Option(None, "--beta", show_default=False, help=(
    f"dpo and kto: the temperature, how far the policy may move from the reference (default {TrainConfig.beta:g}); "
    f"grpo: the weight of the KL to the reference (default {GRPOConfig.beta:g})."))
LOSS_TYPE = typer.Option(None, "--loss-type", show_default=False, help=(
    f"dpo: {t.LOSS_TYPE.help} (default {','.join(TrainConfig().loss_type)}); grpo: how per-token losses are "
    f"averaged, as TRL's: dapo (all tokens of the step) or grpo (each completion's mean; default {GRPOConfig.loss_type})."))
EPSILON = typer.Option(GRPOConfig.epsilon, "--epsilon", help="grpo: the clip range of the probability ratio (> 0).")


def collect(store, method: str) -> tuple[list[dict], dict[str, int]]:
    """(rows, skipped reason -> count) of one session for `method`."""
    skipped: dict[str, int] = {}
    if method == "dpo":
        for outcome, n in store.db.execute(
                "select outcome, count(distinct judgment_id) from preferences where outcome != 'chosen' and withdrawn = 0 "
                "group by outcome"):
            skipped[f"{outcome} (not a preference)"] = n
        rows = []
        for _, ex in store.feedback("dpo"):
            if ex["chosen"] == ex["rejected"]:
                skipped["identical replies"] = skipped.get("identical replies", 0) + 1
            else:
                rows.append({k: ex[k] for k in ("prompt", "chosen", "rejected")})
        return rows, skipped
    if method == "grpo":  # the groups `sessions export --kind grpo` writes, less those that teach nothing
        groups, singles = store.scored_groups()
        rows = [group for group in groups if len(set(group["scores"])) > 1]
        for reason, n in (("turn(s) with a single score", singles),
                          ("group(s) whose scores are all equal", len(groups) - len(rows))):
            if n:
                skipped[reason] = n
        return rows, skipped
    return [ex for _, ex in store.feedback(method)], skipped


def replay(
    names: list[str] = typer.Argument(..., help="One or more session names."),
    method: str = typer.Option("dpo", "--method", help="dpo (preference pairs), sft (demonstrations), kto "
                               "(each rated reply, desirable or not) or grpo (each turn's replies scored 1-5: a group)."),
    output: Path = t.OUTPUT, model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id "
                                                       "(default: the sessions' model, else the bundled one)."),
    max_steps: int = t.MAX_STEPS, epochs: int = t.EPOCHS, batch_size: int = t.BATCH_SIZE, grad_accum: int = t.GRAD_ACCUM,
    lr: float = t.LR, max_length: int = t.MAX_LENGTH, lora_r: int = t.LORA_R, lora_alpha: int = t.LORA_ALPHA,
    beta: float = BETA, loss_type: str = LOSS_TYPE, loss_weights: str = t.LOSS_WEIGHTS,
    label_smoothing: float = t.LABEL_SMOOTHING, discopop_tau: float = t.DISCOPOP_TAU, rpo_alpha: float = t.RPO_ALPHA,
    desirable_weight: float = t.DESIRABLE_WEIGHT, undesirable_weight: float = t.UNDESIRABLE_WEIGHT,
    epsilon: float = EPSILON, scale_rewards: bool = t.SCALE_REWARDS, seed: int = t.SEED, merge: bool = t.MERGE, device: str = t.DEVICE,
    sessions_dir: Path = SESSIONS_DIR, warmup_steps: int = t.WARMUP_STEPS, eval_data: str = t.EVAL_DATA,
    eval_split: float = t.EVAL_SPLIT, eval_steps: int = t.EVAL_STEPS, save_steps: int = t.SAVE_STEPS,
    resume_from_checkpoint: str = t.RESUME, report_to: str = t.REPORT_TO, config: Path = CONFIG,
) -> None:
    """Train a LoRA adapter in batch on the feedback of one or several sessions."""
    options = dict(locals())
    with user_errors():
        from tui_align.store import SessionStore, sessions_dir as resolve

        if method not in REPLAY_METHODS:
            fail(f"--method {method}: choose {', '.join(REPLAY_METHODS)}")
        if method == "grpo":
            from engine.losses import GRPO_LOSS_TYPES

            if beta is not None and beta < 0:
                fail(f"--beta {beta}: grpo's KL weight must be >= 0")
            if loss_type is not None and loss_type not in GRPO_LOSS_TYPES:
                fail(f"--loss-type {loss_type}: grpo's are {', '.join(GRPO_LOSS_TYPES)}")
            if not epsilon > 0:
                fail(f"--epsilon {epsilon}: must be > 0")
        if loss_type is None:
            options["loss_type"] = GRPOConfig.loss_type if method == "grpo" else ",".join(TrainConfig().loss_type)
        rows, skipped, models = [], {}, set()
        for name in names:
            with SessionStore.open(resolve(sessions_dir), name, readonly=True) as store:
                session_rows, session_skipped = collect(store, method)
                models.add(store.meta["model"])
            typer.echo(f"{name}: {len(session_rows)} {ROWS[method]}")
            rows += session_rows
            for reason, n in session_skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        if not rows:
            fail(f"no {ROWS[method]} to train on in {', '.join(names)}" + (f" (skipped: {_skipped(skipped)})" if skipped else ""))
        if model is None and len(models) == 1:
            options["model"] = models.pop()  # the model the feedback was given on
        for option in {option for own in OWN_OPTIONS.values() for option in own} - set(OWN_OPTIONS[method]):
            options.pop(option)
        metrics = t.run(method, options, rows=rows)
        typer.echo(f"used {len(rows)} {ROWS[method]} from {len(names)} session(s)")
        typer.echo("skipped: " + (_skipped(skipped) or "none"))
        typer.echo("final: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))


def _skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items())
