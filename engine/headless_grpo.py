"""Headless GRPO (`tui-align train grpo`): prompts file -> N completions each -> reward -> GRPO steps.

Runs in the calling process, also under `accelerate launch` / torchrun (the step's prompts
are split over the processes, see GRPOTrainer.fit_online). While it runs, the main process writes to
OUTPUT.partial/; the output folder (adapter, tokenizer, history.jsonl with every step's
metrics) appears only when training has finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.headless import check_output, kept_if_resumable, save_beside, work_dir
from engine.protocol import UserError


def train_grpo(prompts: list, reward_spec: str, output: str | Path, model: str | None, config, lora,
               steps: int, device: str = "auto", progress: bool = True, report_to: str = "none",
               log=None, gradient_checkpointing: bool = False) -> list[dict]:
    """Train, then write `output` whole; `report_to` logs every step (engine/tracking.py), `log` is the
    run's RunLog (engine/headless_log.py)."""
    import torch
    from tqdm.auto import tqdm

    from engine.models import add_lora, enable_gradient_checkpointing, load_model
    from engine.rewards import load_reward
    from engine.tracking import open_tracker
    from engine.trainers.base import process_state
    from engine.trainers.grpo import GRPOTrainer

    state = process_state()
    if config.prompts_per_step % state.num_processes:
        raise UserError(f"--prompts-per-step {config.prompts_per_step} must be a multiple of the "
                        f"{state.num_processes} processes (each generates its share of the groups)")
    output = check_output(output)
    reward = load_reward(reward_spec, device=device)  # user code fails here, before the model loads
    partial = work_dir(output)
    main = state.is_main_process
    with kept_if_resumable(partial):
        if main:
            partial.mkdir(parents=True, exist_ok=True)
            if log is not None:
                log.attach(partial)
        torch.manual_seed(config.seed)
        base, tokenizer = load_model(model, device=device if device != "auto" else str(state.device))
        policy = add_lora(base, lora)
        if gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        trainer = GRPOTrainer(policy, tokenizer, config)
        tracker = open_tracker(report_to, partial / "logs", output.name, {"method": "grpo", **config.to_dict()}) if main else None
        bar = tqdm(total=steps, desc="training", disable=not (progress and main))

        def on_step(metrics: dict) -> None:
            bar.set_postfix(score=f"{metrics['score']:.3g}", kl=f"{metrics['kl']:.3g}", len=f"{metrics['completion_length']:.3g}")
            bar.update(1)
            if tracker is not None:
                tracker.log({k: v for k, v in metrics.items() if k != "sample"}, metrics["step"])

        try:
            history = trainer.fit_online(prompts, reward, steps, on_step=on_step)
        finally:
            bar.close()
            if tracker is not None:
                tracker.finish()
        if main:
            save_beside(trainer, partial, {"model": model, "reward": reward_spec, "steps": steps, "prompts": len(prompts),
                                           "metrics": {k: v for k, v in history[-1].items() if k != "sample"}})
            tokenizer.save_pretrained(partial)
            (partial / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
            shutil.rmtree(output, ignore_errors=True)
            partial.rename(output)
    return history
