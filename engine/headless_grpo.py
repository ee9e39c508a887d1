"""Headless GRPO (`tui-align train grpo`): prompts file -> N completions each -> reward -> GRPO steps.

Runs in the calling process, also under `accelerate launch` / torchrun (the step's prompts
are split over the processes, see GRPOTrainer.fit_online). The run itself is engine.headless's
train_on_prompts, shared with PPO.
"""

from __future__ import annotations

from pathlib import Path

from engine.headless import RunOptions, train_on_prompts
from engine.protocol import UserError


def train_grpo(prompts: list, reward_spec: str, output: str | Path, model: str | None, config, lora,
               steps: int, run: RunOptions | None = None, eval_prompts: list | None = None) -> list[dict]:
    """Train, then write `output` whole (engine.headless.train_on_prompts)."""
    from engine.trainers.base import process_state

    processes = process_state().num_processes
    if config.prompts_per_step % processes:
        raise UserError(f"--prompts-per-step {config.prompts_per_step} must be a multiple of the "
                        f"{processes} processes (each generates its share of the groups)")
    return train_on_prompts("grpo", prompts, reward_spec, output, model, config, lora, steps, run, eval_prompts)
