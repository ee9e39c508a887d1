"""`tui-align train sft|dpo|...`: headless training on a dataset file, in this process."""

from __future__ import annotations

from pathlib import Path

import typer

from engine.protocol import LOSS_TERMS, METHOD_KINDS, REPORT_TO as TRACKERS, SFT_TERM, GRPOConfig, TrainConfig, loss_terms
from tui_align.cli.common import CONFIG, user_errors

DEFAULTS = TrainConfig()  # each option's default, defined once there

train_app = typer.Typer(help="Train a LoRA adapter headless, on a dataset (runs under `accelerate launch` too).", no_args_is_help=True)

DATA = typer.Option(..., "--data", help="Rows in TRL's format: a JSONL file, a folder saved by datasets.save_to_disk, "
                    "a folder or file datasets.load_dataset reads (JSON, parquet, CSV), or a datasets hub id.")
OUTPUT = typer.Option(..., "--output", help="Folder to write the adapter to; must not exist yet.")
MODEL = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: bundled SmolLM2-135M-Instruct).")
MAX_STEPS = typer.Option(DEFAULTS.max_steps, "--max-steps", help="Stop after this many optimizer steps (overrides --epochs).")
EPOCHS = typer.Option(DEFAULTS.epochs, "--epochs", help="Passes over the data.")
BATCH_SIZE = typer.Option(DEFAULTS.batch_size, "--batch-size", help="Examples per forward pass (per device).")
GRAD_ACCUM = typer.Option(DEFAULTS.grad_accum, "--grad-accum", help="Forward passes per optimizer step.")
LR = typer.Option(DEFAULTS.lr, "--lr", help="AdamW learning rate of the LoRA weights.")
MAX_LENGTH = typer.Option(DEFAULTS.max_length, "--max-length", help="Truncate prompt+completion to this many tokens.")
LORA_R = typer.Option(16, "--lora-r", help="LoRA rank.")
LORA_ALPHA = typer.Option(32, "--lora-alpha", help="LoRA scaling alpha.")
SEED = typer.Option(DEFAULTS.seed, "--seed", help="Random seed (shuffling and LoRA initialisation).")
MERGE = typer.Option(False, "--merge", help="Also write OUTPUT/merged: a full model with the adapter merged in.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
BETA = typer.Option(DEFAULTS.beta, "--beta", help="DPO and KTO temperature: how far the policy may move from the reference.")
LOSS_TYPE = typer.Option(",".join(DEFAULTS.loss_type), "--loss-type", help=(
    "DPO loss, TRL's names: " + ", ".join(LOSS_TERMS) + f" ({SFT_TERM}: the chosen reply's NLL); several, "
    "comma-separated, are summed with --loss-weights (e.g. sigmoid,sft)."))
LOSS_WEIGHTS = typer.Option(None, "--loss-weights", help="One weight per --loss-type term, comma-separated (default 1 each).")
LABEL_SMOOTHING = typer.Option(DEFAULTS.label_smoothing, "--label-smoothing", help=(
    "Used as TRL 1.16 does: robust's label-flip rate (< 0.5), exo_pair's epsilon (> 0), aot and aot_unpaired; "
    "and with sigmoid it is conservative DPO (cDPO) as TRL had it before 1.0 (TRL 1.16's sigmoid ignores it)."))
DISCOPOP_TAU = typer.Option(DEFAULTS.discopop_tau, "--discopop-tau", help="Temperature of the discopop loss.")
DESIRABLE_WEIGHT = typer.Option(DEFAULTS.desirable_weight, "--desirable-weight", help="Weight of a desirable row's loss "
                                "(raise it when desirable rows are fewer, as TRL advises).")
UNDESIRABLE_WEIGHT = typer.Option(DEFAULTS.undesirable_weight, "--undesirable-weight", help="Weight of an undesirable row's loss.")
RPO_ALPHA = typer.Option(None, "--rpo-alpha", help=f"Alias for the weight of the {SFT_TERM} term of --loss-type (adds it; 0 removes it).")
GRADIENT_CHECKPOINTING = typer.Option(
    False, "--gradient-checkpointing",
    help="Recompute activations in the backward pass instead of keeping them: less memory for big models, ~1/3 slower steps.")
# What every batch command shares besides its hyperparameters (a new command adds these parameters).
SPLIT = typer.Option(None, "--split", help="The split of --data to train on (default: train, else the first).")
WARMUP_STEPS = typer.Option(DEFAULTS.warmup_steps, "--warmup-steps", help="Raise the learning rate linearly over this many steps.")
EVAL_DATA = typer.Option(None, "--eval-data", help="Held-out rows (same formats as --data; a dataset's test split if it has one).")
EVAL_SPLIT = typer.Option(None, "--eval-split", help="Hold out this fraction of --data instead, e.g. 0.1.")
EVAL_STEPS = typer.Option(DEFAULTS.eval_steps, "--eval-steps", help="Evaluate every N steps (and always at the end): eval loss, and reward accuracy for dpo and rm.")
SAVE_STEPS = typer.Option(DEFAULTS.save_steps, "--save-steps", help="Write OUTPUT.partial/checkpoint-N every N steps (adapter, optimizer, scheduler, data position, RNG).")
RESUME = typer.Option(None, "--resume-from-checkpoint", help="Continue a stopped run: a checkpoint-N folder, or `latest` (the newest in OUTPUT.partial).")
REPORT_TO = typer.Option("none", "--report-to", help=f"Log every step's metrics (TRL's names) to {', '.join(TRACKERS[1:])} or none; "
                         "TensorBoard's files go to OUTPUT/logs.")


@train_app.command()
def sft(data: str = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, lr: float = LR,
        max_length: int = MAX_LENGTH, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, seed: int = SEED,
        merge: bool = MERGE, device: str = DEVICE, split: str = SPLIT, warmup_steps: int = WARMUP_STEPS,
        eval_data: str = EVAL_DATA, eval_split: float = EVAL_SPLIT, eval_steps: int = EVAL_STEPS,
        save_steps: int = SAVE_STEPS, resume_from_checkpoint: str = RESUME, report_to: str = REPORT_TO,
        gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
        config: Path = CONFIG) -> None:
    """Supervised fine-tuning on {prompt, completion} or {messages} rows."""
    run("sft", locals())


@train_app.command()
def dpo(data: str = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, lr: float = LR,
        max_length: int = MAX_LENGTH, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, beta: float = BETA,
        loss_type: str = LOSS_TYPE, loss_weights: str = LOSS_WEIGHTS, label_smoothing: float = LABEL_SMOOTHING,
        discopop_tau: float = DISCOPOP_TAU, rpo_alpha: float = RPO_ALPHA, seed: int = SEED, merge: bool = MERGE,
        device: str = DEVICE, split: str = SPLIT, warmup_steps: int = WARMUP_STEPS, eval_data: str = EVAL_DATA,
        eval_split: float = EVAL_SPLIT, eval_steps: int = EVAL_STEPS, save_steps: int = SAVE_STEPS,
        resume_from_checkpoint: str = RESUME, report_to: str = REPORT_TO,
        gradient_checkpointing: bool = GRADIENT_CHECKPOINTING, config: Path = CONFIG) -> None:
    """Direct preference optimisation on {prompt, chosen, rejected} rows."""
    run("dpo", locals())


@train_app.command()
def kto(data: str = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, lr: float = LR,
        max_length: int = MAX_LENGTH, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, beta: float = BETA,
        desirable_weight: float = DESIRABLE_WEIGHT, undesirable_weight: float = UNDESIRABLE_WEIGHT,
        seed: int = SEED, merge: bool = MERGE, device: str = DEVICE, split: str = SPLIT,
        warmup_steps: int = WARMUP_STEPS, eval_data: str = EVAL_DATA, eval_split: float = EVAL_SPLIT,
        eval_steps: int = EVAL_STEPS, save_steps: int = SAVE_STEPS, resume_from_checkpoint: str = RESUME,
        report_to: str = REPORT_TO, config: Path = CONFIG) -> None:
    """Kahneman-Tversky optimisation on unpaired {prompt, completion, label} rows (label true: desirable)."""
    run("kto", locals())


KINDS = {**METHOD_KINDS, "rm": "preference"}  # the rows each batch method trains on


def run(method: str, options: dict, rows: list[dict] | None = None) -> dict:
    """Validate everything cheap first, then train; shared with `replay`.

    `options`: the command's parameters by name (its `locals()`): TrainConfig's fields, the
    LoRA shape, the data and eval sources and the run options (merge, device, resume, report-to)."""
    from engine.headless_log import LOG_NAME, quiet_libraries  # standard library only

    with user_errors(), quiet_libraries() as log:
        from engine.data import EVAL_SPLITS, load_examples
        from engine.protocol import DataError, UserError
        from engine.headless import check_output
        from engine.tracking import check_report_to

        output = check_output(options["output"])
        if method == "dpo":  # the DPO objective, as TRL's loss_type list and loss_weights
            options = {**options, **dict(zip(("loss_type", "loss_weights"), loss_terms(
                options["loss_type"], options.get("loss_weights"), options.get("rpo_alpha"),
                options.get("label_smoothing", DEFAULTS.label_smoothing))))}
        for name in ("batch_size", "grad_accum", "epochs", "save_steps", "eval_steps"):
            if options.get(name) is not None and options[name] < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if options.get("warmup_steps", 0) < 0:
            raise UserError("--warmup-steps must be at least 0")
        check_report_to(options.get("report_to") or "none")
        if options.get("eval_data") and options.get("eval_split") is not None:
            raise UserError("--eval-data and --eval-split exclude each other: choose one")
        if method == "kto" and options["batch_size"] < 2:  # TRL refuses it too
            raise UserError("--batch-size must be at least 2 for kto: its KL estimate pairs each completion "
                            "with another row's prompt")
        if rows is None:
            rows = load_examples(options["data"], KINDS[method], options.get("split"))
        eval_rows = None
        if options.get("eval_data"):
            try:
                eval_rows = load_examples(options["eval_data"], KINDS[method], preferred=EVAL_SPLITS)
            except DataError as exc:
                raise DataError(f"--eval-data {exc}") from None

        from engine.headless import RunOptions, split_rows, train
        from engine.models import LoRAConfig

        if options.get("eval_split") is not None:
            rows, eval_rows = split_rows(rows, options["eval_split"], options.get("seed", 0))
        run_options = RunOptions(merge=options.get("merge", False), device=options.get("device", "auto"),
                                 resume=options.get("resume_from_checkpoint"),
                                 report_to=options.get("report_to") or "none", log=log,
                                 gradient_checkpointing=options.get("gradient_checkpointing", False))
        config_type = GRPOConfig if method == "grpo" else TrainConfig  # grpo: `replay`'s stored groups
        metrics = train(method, rows, output, options.get("model"), config_type.from_dict(options),
                        LoRAConfig(r=options["lora_r"], alpha=options["lora_alpha"]), run_options,
                        eval_rows=eval_rows)
        from engine.trainers.base import process_state

        if process_state().is_main_process:
            log_file = output / LOG_NAME
            typer.echo(summary(method, len(rows), output, options, metrics, log_file if log_file.stat().st_size else None))
        return metrics


SUMMARY_FIGURES = ("loss", "rewards/accuracies", "rewards/margins", "kl", "accuracy", "margin")  # of the last step and the last evaluation


def usage(method: str, output: Path, model: str | None, merged: bool) -> str:
    """How to use what a run wrote."""
    if method == "rm":
        return f"use --reward rm:{output} (train ppo)"
    if merged:
        return f"a full model in {output}/merged (AutoModelForCausalLM.from_pretrained)"
    from engine.models import CONVERTED_NAME, home

    base = model or str(home() / "models" / CONVERTED_NAME)
    return (f"use it: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), {str(output)!r})"
            + ("" if method in ("ppo", "grpo") else ", or train with --merge for a full model"))


def summary(method: str, rows: int, output: Path, options: dict, metrics: dict, log_file: Path | None) -> str:
    """The one line a run ends with: what it did, its last figures, where it went and how to use it."""
    figures = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                        if k.removeprefix("eval/").removeprefix("train/") in SUMMARY_FIGURES)
    use = usage(method, output, options.get("model"), options.get("merge", False))
    extras = "".join(f"; {what}" for what in (
        f"metrics: {metrics['logged_to']}" if metrics.get("logged_to") else "",
        f"library warnings: {log_file}" if log_file else "") if what)
    return f"trained {method} on {rows} rows -> {output}  ({figures}); {use}{extras}"


PROMPTS = typer.Option(..., "--prompts", help="Prompts: a .txt file (one per line) or JSONL with a \"prompt\" (text or messages).")
REWARD = typer.Option(..., "--reward", help="length (words), rm:PATH (a `train rm` folder), module:function or file.py:function.")
EVAL_PROMPTS = typer.Option(None, "--eval-prompts", help="Held-out prompts (same formats as --prompts; a dataset's test split if it has one).")
EVAL_PROMPTS_SPLIT = typer.Option(None, "--eval-split", help="Hold out this fraction of --prompts instead, e.g. 0.1.")
EVAL_PROMPTS_STEPS = typer.Option(None, "--eval-steps", help="Evaluate every N steps (and always at the end): the mean reward "
                                  "(eval/reward) and length (eval/completion_length) of replies sampled on the held-out prompts.")
SAVE_PROMPTS_STEPS = typer.Option(None, "--save-steps", help="Write OUTPUT.partial/checkpoint-N every N steps (adapter, value "
                                  "head, optimizer, KL coefficient, prompt position, RNG).")


@train_app.command()
def ppo(prompts: Path = PROMPTS, reward: str = REWARD, output: Path = OUTPUT, model: str = MODEL,
        steps: int = typer.Option(20, "--steps", help="PPO steps: each samples --batch-size replies and updates on them."),
        batch_size: int = typer.Option(8, "--batch-size", help="Replies sampled and scored per step."),
        mini_batch_size: int = typer.Option(4, "--mini-batch-size", help="Replies per optimizer update within a step."),
        ppo_epochs: int = typer.Option(4, "--ppo-epochs", help="Passes over each step's replies."),
        kl_coef: float = typer.Option(0.05, "--kl-coef", help="Weight of the per-token KL penalty to the reference (initial, with --target-kl)."),
        target_kl: float = typer.Option(None, "--target-kl", help="Adapt --kl-coef to keep the per-reply KL near this."),
        max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Longest reply sampled."),
        temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature of the rollouts (> 0)."),
        lr: float = typer.Option(5e-5, "--lr", help="AdamW learning rate of the LoRA weights and the value head."),
        seed: int = SEED, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA,
        plot: Path = typer.Option(None, "--plot", help="Also write a PNG of score, KL and length per step (needs matplotlib)."),
        device: str = DEVICE, eval_prompts: Path = EVAL_PROMPTS, eval_split: float = EVAL_PROMPTS_SPLIT,
        eval_steps: int = EVAL_PROMPTS_STEPS, save_steps: int = SAVE_PROMPTS_STEPS, resume_from_checkpoint: str = RESUME,
        report_to: str = REPORT_TO, gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
        config: Path = CONFIG) -> None:
    """PPO with a value head on prompts, scored by a reward function or reward model."""
    from engine.headless_log import quiet_libraries  # standard library only

    with user_errors(), quiet_libraries() as log:
        from engine.protocol import UserError
        from engine.headless_ppo import check_plot

        for flag, value in (("mini-batch-size", mini_batch_size), ("ppo-epochs", ppo_epochs)):
            if value < 1:
                raise UserError(f"--{flag} must be at least 1")
        if kl_coef < 0 or (target_kl is not None and target_kl <= 0):
            raise UserError("--kl-coef must be >= 0 and --target-kl > 0")
        check_plot(plot)
        from engine.trainers.ppo import PPOConfig

        settings = PPOConfig(lr=lr, batch_size=batch_size, mini_batch_size=min(mini_batch_size, max(batch_size, 1)),
                             ppo_epochs=ppo_epochs, kl_coef=kl_coef, target_kl=target_kl,
                             max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                             save_steps=save_steps, eval_steps=eval_steps)
        run_on_prompts("ppo", locals(), settings, log)


def run_on_prompts(method: str, options: dict, settings, log) -> list[dict]:
    """What `train ppo` and `train grpo` share: the checks of the common options, the prompts and the
    held-out prompts, the run, and its summary line. `options`: the command's parameters by name."""
    import resource

    from engine.headless import RunOptions, check_output, split_rows
    from engine.headless_ppo import load_prompts
    from engine.protocol import DataError, UserError
    from engine.tracking import check_report_to

    check_output(options["output"])
    for name in ("steps", "batch_size", "prompts_per_step", "max_new_tokens", "save_steps", "eval_steps"):
        if options.get(name) is not None and options[name] < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not options["temperature"] > 0 or not options["lr"] > 0:
        raise UserError("--temperature and --lr must be > 0")
    check_report_to(options["report_to"])
    if options["eval_prompts"] and options["eval_split"] is not None:
        raise UserError("--eval-prompts and --eval-split exclude each other: choose one")
    prompts = load_prompts(options["prompts"])
    eval_prompts = None
    if options["eval_prompts"]:
        from engine.data import EVAL_SPLITS

        try:
            eval_prompts = load_prompts(options["eval_prompts"], preferred=EVAL_SPLITS)
        except DataError as exc:
            raise DataError(f"--eval-prompts {exc}") from None
    if options["eval_split"] is not None:
        prompts, eval_prompts = split_rows(prompts, options["eval_split"], options["seed"])

    from engine.models import LoRAConfig

    run = RunOptions(device=options["device"], resume=options["resume_from_checkpoint"], report_to=options["report_to"],
                     log=log, gradient_checkpointing=options["gradient_checkpointing"])
    lora = LoRAConfig(r=options["lora_r"], alpha=options["lora_alpha"])
    output, steps = options["output"], options["steps"]
    if method == "ppo":
        from engine.headless_ppo import train_ppo

        history = train_ppo(prompts, options["reward"], output, options["model"], settings, lora, steps,
                            plot=options["plot"], run=run, eval_prompts=eval_prompts)
    else:
        from engine.headless_grpo import train_grpo

        history = train_grpo(prompts, options["reward"], output, options["model"], settings, lora, steps, run=run,
                             eval_prompts=eval_prompts)
    from engine.trainers.base import process_state

    if process_state().is_main_process:
        first, last = history[0], history[-1]
        length = "response_length" if method == "ppo" else "completion_length"
        groups = f" x {settings.num_generations} completions" if method == "grpo" else ""
        held_out = (f", eval reward {last['eval/reward']:.4g}, eval length {last['eval/completion_length']:.3g}"
                    if "eval/reward" in last else "")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        typer.echo(f"trained {method} for {steps} steps on {len(prompts)} prompts{groups} -> {output}  (score "
                   f"{first['score']:.4g} -> {last['score']:.4g}, kl {last['kl']:.4g}, length {first[length]:.3g} -> "
                   f"{last[length]:.3g} tokens{held_out}, peak RSS {peak_mb:.0f} MB); "
                   f"{usage(method, output, options['model'], False)}")
    return history


GRPO = GRPOConfig()  # `train grpo`'s defaults, defined once there
SCALE_REWARDS = typer.Option(GRPO.scale_rewards, "--scale-rewards/--no-scale-rewards", help="Divide advantages by the group's std (TRL's scale_rewards=group); off: only centre them.")


@train_app.command()
def grpo(prompts: Path = PROMPTS, reward: str = REWARD, output: Path = OUTPUT, model: str = MODEL,
         num_generations: int = typer.Option(GRPO.num_generations, "--num-generations", help="Completions sampled per prompt: one group, at least 2."),
         steps: int = typer.Option(20, "--steps", help="Optimizer steps: each samples --prompts-per-step groups and updates on them."),
         prompts_per_step: int = typer.Option(GRPO.prompts_per_step, "--prompts-per-step", help="Prompts (groups) per step, over all processes (a multiple of their number)."),
         beta: float = typer.Option(GRPO.beta, "--beta", help="Weight of the k3 KL to the reference (TRL 1.16's default is 0)."),
         epsilon: float = typer.Option(GRPO.epsilon, "--epsilon", help="Clip range of the probability ratio."),
         loss_type: str = typer.Option(GRPO.loss_type, "--loss-type", help="Aggregation of per-token losses, as TRL's: dapo (all tokens of the step) or grpo (each completion's mean)."),
         scale_rewards: bool = SCALE_REWARDS,
         max_new_tokens: int = typer.Option(GRPO.max_new_tokens, "--max-new-tokens", help="Longest completion sampled."),
         temperature: float = typer.Option(GRPO.temperature, "--temperature", help="Sampling temperature of the completions (> 0)."),
         lr: float = typer.Option(GRPO.lr, "--lr", help="AdamW learning rate of the LoRA weights."),
         seed: int = SEED, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, device: str = DEVICE,
         eval_prompts: Path = EVAL_PROMPTS, eval_split: float = EVAL_PROMPTS_SPLIT, eval_steps: int = EVAL_PROMPTS_STEPS,
         save_steps: int = SAVE_PROMPTS_STEPS, resume_from_checkpoint: str = RESUME,
         report_to: str = REPORT_TO, gradient_checkpointing: bool = GRADIENT_CHECKPOINTING,
         config: Path = CONFIG) -> None:
    """GRPO on prompts: N completions each, scored by a reward function or reward model, group-relative advantages."""
    from engine.headless_log import quiet_libraries  # standard library only

    with user_errors(), quiet_libraries() as log:
        from engine.losses import GRPO_LOSS_TYPES
        from engine.protocol import UserError

        if num_generations < 2:
            raise UserError(f"--num-generations {num_generations}: a group needs at least 2 completions to compare")
        if loss_type not in GRPO_LOSS_TYPES:
            raise UserError(f"--loss-type {loss_type}: choose one of {', '.join(GRPO_LOSS_TYPES)}")
        if beta < 0 or not epsilon > 0:
            raise UserError("--beta must be >= 0 and --epsilon > 0")
        settings = GRPOConfig(lr=lr, beta=beta, epsilon=epsilon, loss_type=loss_type, scale_rewards=scale_rewards,
                              num_generations=num_generations, prompts_per_step=prompts_per_step,
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                              save_steps=save_steps, eval_steps=eval_steps)
        run_on_prompts("grpo", locals(), settings, log)


@train_app.command()
def rm(data: str = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
       epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LR, max_length: int = MAX_LENGTH,
       lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, seed: int = SEED, device: str = DEVICE,
       split: str = SPLIT, warmup_steps: int = WARMUP_STEPS, eval_data: str = EVAL_DATA,
       eval_split: float = EVAL_SPLIT, eval_steps: int = EVAL_STEPS, save_steps: int = SAVE_STEPS,
       resume_from_checkpoint: str = RESUME, report_to: str = REPORT_TO,
        gradient_checkpointing: bool = GRADIENT_CHECKPOINTING, config: Path = CONFIG) -> None:
    """A reward model (score head + LoRA on the base) from {prompt, chosen, rejected} rows; use it as --reward rm:OUTPUT."""
    run("rm", locals())
