"""`tui-align train sft|dpo|...`: headless training on a dataset file, in this process."""

from __future__ import annotations

from pathlib import Path

import typer

from engine.protocol import TrainConfig
from tui_align.cli.common import user_errors

DEFAULTS = TrainConfig()  # each option's default, defined once there

train_app = typer.Typer(help="Train a LoRA adapter headless, on a dataset (runs under `accelerate launch` too).", no_args_is_help=True)

DATA = typer.Option(..., "--data", help="JSONL file or a folder saved by datasets.save_to_disk, in TRL's format.")
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
BETA = typer.Option(DEFAULTS.beta, "--beta", help="DPO temperature: how far the policy may move from the reference.")
LOSS_TYPE = typer.Option(DEFAULTS.loss_type, "--loss-type", help="DPO loss: sigmoid, hinge, ipo or robust.")
LABEL_SMOOTHING = typer.Option(DEFAULTS.label_smoothing, "--label-smoothing", help="Assumed label-flip rate (cDPO with sigmoid, robust).")
RPO_ALPHA = typer.Option(DEFAULTS.rpo_alpha, "--rpo-alpha", help="Add this weight times the chosen reply's NLL (RPO); keeps small-data DPO from drifting.")


@train_app.command()
def sft(data: Path = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, lr: float = LR,
        max_length: int = MAX_LENGTH, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, seed: int = SEED,
        merge: bool = MERGE, device: str = DEVICE) -> None:
    """Supervised fine-tuning on {prompt, completion} or {messages} rows."""
    run("sft", data, output, model, merge, device, lora_r, lora_alpha, dict(
        max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        max_length=max_length, seed=seed))


@train_app.command()
def dpo(data: Path = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
        epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, grad_accum: int = GRAD_ACCUM, lr: float = LR,
        max_length: int = MAX_LENGTH, lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, beta: float = BETA,
        loss_type: str = LOSS_TYPE, label_smoothing: float = LABEL_SMOOTHING, rpo_alpha: float = RPO_ALPHA,
        seed: int = SEED, merge: bool = MERGE, device: str = DEVICE) -> None:
    """Direct preference optimisation on {prompt, chosen, rejected} rows."""
    run("dpo", data, output, model, merge, device, lora_r, lora_alpha, dict(
        max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        max_length=max_length, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
        rpo_alpha=rpo_alpha, seed=seed))


def run(method: str, data: Path, output: Path, model: str | None, merge: bool, device: str,
        lora_r: int, lora_alpha: int, options: dict, rows: list[dict] | None = None) -> dict:
    """Validate everything cheap first, then train; shared with `replay`."""
    with user_errors():
        from engine.data import load_examples
        from engine.protocol import UserError
        from engine.headless import check_output
        from engine.losses import DPO_LOSS_TYPES

        check_output(output)
        if options.get("loss_type", "sigmoid") not in DPO_LOSS_TYPES:
            raise UserError(f"--loss-type {options['loss_type']}: choose one of {', '.join(DPO_LOSS_TYPES)}")
        for name in ("batch_size", "grad_accum", "epochs"):
            if options.get(name) is not None and options[name] < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if rows is None:
            rows = load_examples(data, "preference" if method == "dpo" else "sft")

        from engine.headless import train
        from engine.models import LoRAConfig

        metrics = train(method, rows, output, model, TrainConfig.from_dict(options),
                        LoRAConfig(r=lora_r, alpha=lora_alpha), merge=merge, device=device)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        typer.echo(f"trained {method} on {len(rows)} rows -> {output}  ({summary})")
        return metrics


PROMPTS = typer.Option(..., "--prompts", help="Prompts: a .txt file (one per line) or JSONL with a \"prompt\" (text or messages).")
REWARD = typer.Option(..., "--reward", help="length (words), rm:PATH (a `train rm` folder), module:function or file.py:function.")


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
        device: str = DEVICE) -> None:
    """PPO with a value head on prompts, scored by a reward function or reward model."""
    with user_errors():
        import resource

        from engine.protocol import UserError
        from engine.headless import check_output
        from engine.headless_ppo import check_plot, load_prompts

        check_output(output)
        for flag, value in (("steps", steps), ("batch-size", batch_size), ("mini-batch-size", mini_batch_size),
                            ("ppo-epochs", ppo_epochs), ("max-new-tokens", max_new_tokens)):
            if value < 1:
                raise UserError(f"--{flag} must be at least 1")
        if kl_coef < 0 or (target_kl is not None and target_kl <= 0):
            raise UserError("--kl-coef must be >= 0 and --target-kl > 0")
        if not temperature > 0 or not lr > 0:
            raise UserError("--temperature and --lr must be > 0")
        check_plot(plot)
        rows = load_prompts(prompts)

        from engine.headless_ppo import train_ppo
        from engine.models import LoRAConfig
        from engine.trainers.ppo import PPOConfig

        config = PPOConfig(lr=lr, batch_size=batch_size, mini_batch_size=min(mini_batch_size, batch_size),
                           ppo_epochs=ppo_epochs, kl_coef=kl_coef, target_kl=target_kl,
                           max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        history = train_ppo(rows, reward, output, model, config, LoRAConfig(r=lora_r, alpha=lora_alpha), steps,
                            device=device, plot=plot)
        first, last = history[0], history[-1]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        typer.echo(f"trained ppo for {steps} steps on {len(rows)} prompts -> {output}  (score {first['score']:.4g} -> "
                   f"{last['score']:.4g}, kl {last['kl']:.4g}, length {first['response_length']:.3g} -> "
                   f"{last['response_length']:.3g} tokens, peak RSS {peak_mb:.0f} MB)")


@train_app.command()
def rm(data: Path = DATA, output: Path = OUTPUT, model: str = MODEL, max_steps: int = MAX_STEPS,
       epochs: int = EPOCHS, batch_size: int = BATCH_SIZE, lr: float = LR, max_length: int = MAX_LENGTH,
       lora_r: int = LORA_R, lora_alpha: int = LORA_ALPHA, seed: int = SEED, device: str = DEVICE) -> None:
    """A reward model (score head + LoRA on the base) from {prompt, chosen, rejected} rows; use it as --reward rm:OUTPUT."""
    with user_errors():
        from engine.data import load_examples
        from engine.protocol import UserError
        from engine.headless import check_output

        check_output(output)
        if batch_size < 1 or epochs < 1:
            raise UserError("--batch-size and --epochs must be at least 1")
        rows = load_examples(data, "preference")

        from engine.models import LoRAConfig
        from engine.trainers.reward import train_reward_model

        config = TrainConfig(lr=lr, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
                             max_length=max_length, seed=seed)
        metrics = train_reward_model(rows, output, model, config, LoRAConfig(r=lora_r, alpha=lora_alpha), device=device)
        typer.echo(f"trained a reward model on {len(rows)} pairs -> {output}  (accuracy {metrics['eval/accuracy']:.3f}, "
                   f"margin {metrics['eval/margin']:.3f}; use --reward rm:{output})")
