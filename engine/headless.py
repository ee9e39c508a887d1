"""Headless batch training, shared by `tui-align train` and `tui-align replay`.

Runs in the calling process so that `accelerate launch tui-align train ...` spreads it
over GPUs unchanged. The output folder appears only when training has finished.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.protocol import UserError
from engine.models import LoRAConfig, add_lora, load_model
from engine.trainers import DPOTrainer, SFTTrainer, TrainConfig

TRAINERS = {"sft": SFTTrainer, "dpo": DPOTrainer}


def check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.exists() and any(output.iterdir() if output.is_dir() else [output]):
        raise UserError(f"--output {output} already exists: choose a new folder (nothing was written)")
    return output


def train(method: str, rows: list[dict], output: str | Path, model: str | None, config: TrainConfig,
          lora: LoRAConfig, merge: bool = False, device: str = "auto", metadata: dict | None = None) -> dict:
    """Fit a LoRA adapter on `rows`, save it to `output` (and a merged model with `merge`)."""
    import torch
    from engine.trainers.base import process_state

    output = check_output(output)
    torch.manual_seed(config.seed)
    base, tokenizer = load_model(model, device=device if device != "auto" else str(process_state().device))
    policy = add_lora(base, lora)
    trainer = TRAINERS[method](policy, tokenizer, config)
    metrics = trainer.fit(rows, output_dir=output.with_name(output.name + ".partial"))
    if process_state().is_main_process:
        partial = output.with_name(output.name + ".partial")
        trainer.save(partial, {"method": method, "model": model, "rows": len(rows), "metrics": metrics, **(metadata or {})})
        tokenizer.save_pretrained(partial)
        if merge:
            from engine.versions import save_merged

            save_merged(trainer.model, tokenizer, partial / "merged")
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    return metrics
