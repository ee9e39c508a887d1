"""Kahneman-Tversky optimisation: single replies marked desirable or undesirable, no pairs.

Each row goes through the model as one packed row (engine.data.kto_rows): its prompt, its
completion, and the batch's mismatched completion (the previous row's) after the same
prompt, on which KTO estimates its KL reference point; the prompt runs once for both.
The reference is the base with the adapter disabled; it never changes, so its log-probs are
cached per (prompt, completion) token sequence, as DPOTrainer caches them per reply.
"""

from __future__ import annotations

import hashlib
from array import array

import torch

from engine.data import kto_rows, pack
from engine.logprobs import pair_token_logps
from engine.losses import kto_kl, kto_loss
from engine.trainers.base import Trainer
from engine.trainers.dpo import REFERENCE_CACHE_SIZE


class KTOTrainer(Trainer):
    method = "kto"

    def __init__(self, model, tokenizer, config=None):
        super().__init__(model, tokenizer, config)
        self.reference_cache: dict[bytes, float] = {}

    def completion_logps(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(completion, mismatched completion) log-probs per row under the current adapter."""
        per_token = pair_token_logps(self.model, **batch)
        segments = batch["segments"]
        return (per_token * (segments == 1)).sum(-1), (per_token * (segments == 2)).sum(-1)

    def reference_logps(self, rows, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The same log-probs with the adapter disabled, from the cache where it has them."""
        keys = [(_key(p + c), _key(p + m)) for p, c, m in rows]
        if any(c not in self.reference_cache or m not in self.reference_cache for c, m in keys):
            was_training = self.model.training
            self.model.eval()
            policy = getattr(self.model, "module", self.model)  # under DistributedDataParallel
            with torch.inference_mode(), policy.disable_adapter():
                completion, mismatched = self.completion_logps(batch)
            self.model.train(was_training)
            for (c, m), c_logp, m_logp in zip(keys, completion.tolist(), mismatched.tolist()):
                self.reference_cache[c], self.reference_cache[m] = c_logp, m_logp
        values = [[self.reference_cache[c] for c, _ in keys], [self.reference_cache[m] for _, m in keys]]
        while len(self.reference_cache) > REFERENCE_CACHE_SIZE:  # oldest first
            del self.reference_cache[next(iter(self.reference_cache))]
        return tuple(torch.tensor(v, device=self.device) for v in values)

    def loss(self, examples: list[dict]):
        cfg = self.config
        rows = kto_rows(self.tokenizer, examples, cfg.max_length)
        batch = pack(rows, self.tokenizer.pad_token_id, self.device)
        ref, ref_mismatched = self.reference_logps(rows, batch)
        policy, policy_mismatched = self.completion_logps(batch)
        kl = kto_kl(policy_mismatched, ref_mismatched)
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # one reference point for all ranks, as TRL
            torch.distributed.all_reduce(kl)
            kl = kl / torch.distributed.get_world_size()
        desirable = torch.tensor([ex["label"] for ex in examples], dtype=torch.bool, device=self.device)
        losses = kto_loss(policy, ref, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
        rewards = cfg.beta * (policy - ref).detach()
        metrics = {"kl": kl.clamp(min=0).item(), "tokens": int((batch["segments"] >= 0).sum())}
        for name, mask in (("chosen", desirable), ("rejected", ~desirable)):
            if mask.any():
                metrics[f"rewards/{name}"] = rewards[mask].mean().item()
        if desirable.any() and not desirable.all():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.mean(), metrics


def _key(ids: list[int]) -> bytes:
    """A token sequence's cache key: 16 bytes however long the conversation (a digest of the ids)."""
    return hashlib.blake2b(array("q", ids).tobytes(), digest_size=16).digest()
