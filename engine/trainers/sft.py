"""Supervised fine-tuning on demonstrations: cross-entropy on the completion tokens."""

from __future__ import annotations

from engine.data import sft_batch
from engine.losses import sft_loss
from engine.trainers.base import Trainer


class SFTTrainer(Trainer):
    method = "sft"

    def loss(self, examples: list[dict]):
        batch = sft_batch(self.tokenizer, examples, self.config.max_length, self.device)
        loss = sft_loss(self.model, **batch)
        return loss, {"tokens": int(batch["completion_mask"].sum())}
