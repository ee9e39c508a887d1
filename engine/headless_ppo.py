"""Headless PPO (`tui-align train ppo`): prompts file -> rollouts -> reward -> PPO steps.

Runs in the calling process. The output folder (adapter, value head, tokenizer,
history.jsonl with every step's metrics) appears only when training has finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.data import read_rows
from engine.protocol import DataError, UserError
from engine.headless import check_output, kept_if_resumable, save_beside, work_dir


def load_prompts(path: str | Path) -> list:
    """Prompts from a .txt file (one per line) or JSONL / dataset rows with a "prompt"
    (a string, or a list of {role, content} messages)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            prompts = [line.strip() for line in path.read_bytes().decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    else:
        prompts = []
        for number, row in enumerate(read_rows(path), 1):
            prompt = row.get("prompt")
            ok_text = isinstance(prompt, str) and prompt.strip()
            ok_messages = isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
            if not (ok_text or ok_messages):
                raise DataError(f"{path}: row {number}: needs a \"prompt\": a non-empty string or a list of {{role, content}} messages")
            prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def check_plot(plot: str | Path | None) -> None:
    if plot is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install matplotlib); every step's metrics are "
                        "written to OUTPUT/history.jsonl anyway") from None


def train_ppo(prompts: list, reward_spec: str, output: str | Path, model: str | None, config, lora,
              steps: int, device: str = "auto", plot: str | Path | None = None, progress: bool = True,
              report_to: str = "none", log=None, gradient_checkpointing: bool = False) -> list[dict]:
    """Train, then write `output` whole; `report_to` logs every step (engine/tracking.py), `log` is the
    run's RunLog (engine/headless_log.py). Under `accelerate launch` every process rolls out its own
    replies (PPOTrainer.fit averages the gradients) and the main process writes the folder and the plot."""
    import torch
    from tqdm.auto import tqdm

    from engine.models import add_lora, enable_gradient_checkpointing, load_model
    from engine.rewards import load_reward
    from engine.tracking import open_tracker
    from engine.trainers.base import process_state
    from engine.trainers.ppo import PPOTrainer

    output = check_output(output)
    check_plot(plot)
    state = process_state()
    device = device if device != "auto" else str(state.device)  # under accelerate: this process's own
    reward = load_reward(reward_spec, device=device)  # user code fails here, before the model loads
    partial = work_dir(output)
    with kept_if_resumable(partial):
        if state.is_main_process:
            partial.mkdir(parents=True, exist_ok=True)
            if log is not None:
                log.attach(partial)
        torch.manual_seed(config.seed)
        base, tokenizer = load_model(model, device=device)
        policy = add_lora(base, lora)
        if gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        trainer = PPOTrainer(policy, tokenizer, config)
        tracker = open_tracker(report_to, partial / "logs", output.name, {"method": "ppo", **config.to_dict()}) \
            if state.is_main_process else None
        bar = tqdm(total=steps, desc="training", disable=not (progress and state.is_main_process))

        def on_step(metrics: dict) -> None:
            bar.set_postfix(score=f"{metrics['score']:.3g}", kl=f"{metrics['kl']:.3g}", len=f"{metrics['response_length']:.3g}")
            bar.update(1)
            if tracker is not None:
                tracker.log(metrics, metrics["step"])

        try:
            history = trainer.fit(prompts, reward, steps, on_step=on_step)
        finally:
            bar.close()
            if tracker is not None:
                tracker.finish()
        if not state.is_main_process:
            return history
        save_beside(trainer, partial, {"model": model, "reward": reward_spec, "steps": steps, "prompts": len(prompts),
                                       "metrics": {k: v for k, v in history[-1].items() if k != "sample"}})
        tokenizer.save_pretrained(partial)
        (partial / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    if plot is not None:
        write_plot(history, plot, title=f"PPO, reward {reward_spec}")
    return history


def write_plot(history: list[dict], path: str | Path, title: str = "PPO") -> Path:
    """Mean score, KL and response length per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for axis, key, label in zip(axes, ("score", "kl", "response_length"),
                                ("mean score", "KL(policy || reference) per reply", "response length (tokens)")):
        axis.plot(steps, [h[key] for h in history], marker=".")
        axis.set_xlabel("step")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
