"""Supervised fine-tuning on demonstrations: cross-entropy on the completion tokens."""

from __future__ import annotations

from engine.data import sft_batch
from engine.losses import sft_loss
from engine.trainers.base import Trainer


class SFTTrainer(Trainer):
    method = "sft"

    def normalisers(self, examples: list[dict]) -> dict:
        """The completion tokens: the loss is a mean over all of them."""
        mask = sft_batch(self.tokenizer, examples, self.config.max_length)["completion_mask"]
        return {"completion_tokens": int(mask[:, 1:].sum().clamp(min=1))}

    def loss(self, examples: list[dict], norm: dict | None = None):
        batch = sft_batch(self.tokenizer, examples, self.config.max_length, self.device)
        tokens = None if norm is None else norm["completion_tokens"]
        loss = sft_loss(self.model, **batch, count=tokens)
        return loss, {"tokens": int(batch["completion_mask"].sum())}
