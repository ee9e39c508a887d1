"""Direct preference optimisation over one shared base.

The policy is base + LoRA adapter; the reference is the same base with the adapter
disabled, so one copy of the weights serves both. Chosen and rejected replies go through
the model as one batch.
"""

from __future__ import annotations

import torch

from engine.data import preference_batch
from engine.logprobs import token_logps
from engine.losses import dpo_loss
from engine.trainers.base import Trainer


class DPOTrainer(Trainer):
    def completion_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence log-probs and the NLL per completion token, under the current adapter."""
        per_token = token_logps(self.model, **batch)
        return self._reduce(per_token, batch["completion_mask"]), per_token

    def _reduce(self, per_token, completion_mask):
        logps = per_token.sum(-1)
        if self.config.loss_type == "ipo":  # IPO works on per-token averages (as TRL does)
            logps = logps / completion_mask[:, 1:].sum(-1).clamp(min=1)
        return logps

    @torch.no_grad()
    def reference_logps(self, examples: list[dict]) -> list[tuple[float, float]]:
        """(chosen, rejected) reference log-probs: the base with the adapter disabled."""
        batch = preference_batch(self.tokenizer, examples, self.config.max_length, self.device)
        was_training = self.model.training
        self.model.eval()
        with self.model.disable_adapter():
            logps = self._reduce(token_logps(self.model, **batch), batch["completion_mask"])
        self.model.train(was_training)
        chosen, rejected = logps.chunk(2)
        return list(zip(chosen.tolist(), rejected.tolist()))

    def loss(self, examples: list[dict]):
        cfg = self.config
        if any("ref_chosen_logps" not in ex for ex in examples):
            refs = self.reference_logps(examples)
            examples = [{**ex, "ref_chosen_logps": c, "ref_rejected_logps": r} for ex, (c, r) in zip(examples, refs)]
        batch = preference_batch(self.tokenizer, examples, cfg.max_length, self.device)
        logps, per_token = self.completion_logps(batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen = torch.tensor([ex["ref_chosen_logps"] for ex in examples], device=self.device)
        ref_rejected = torch.tensor([ex["ref_rejected_logps"] for ex in examples], device=self.device)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss_type, cfg.label_smoothing
        )
        loss = losses.mean()
        metrics = {}
        if cfg.rpo_alpha:
            chosen_mask = batch["completion_mask"][: len(examples), 1:]
            nll = -per_token[: len(examples)].sum() / chosen_mask.sum().clamp(min=1)
            loss = loss + cfg.rpo_alpha * nll
            metrics["nll"] = nll.item()
        margin = chosen_rewards - rejected_rewards
        metrics.update({
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/margin": margin.mean().item(),
            "rewards/accuracy": (margin > 0).float().mean().item(),
            "tokens": int(batch["attention_mask"].sum()),
        })
        return loss, metrics
