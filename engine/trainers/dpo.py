"""Direct preference optimisation over one shared base.

The policy is base + LoRA adapter; the reference is the same base with the adapter
disabled, so one copy of the weights serves both. Pairs go through the model packed by prompt
(engine.data.packed_groups): a prompt and each distinct reply run once, however many pairs share them.
The reference never changes (the base is frozen), so its log-probs are computed once per
pair and cached: later epochs, and live updates over a window of recent pairs, reuse them.
"""

from __future__ import annotations

import json

import torch

from engine.data import packed_groups, tokenize_pair
from engine.logprobs import pair_token_logps
from engine.losses import LENGTH_AVERAGED, dpo_loss
from engine.protocol import SFT_SUFFIX_TERM, SFT_TERM
from engine.trainers.base import Trainer

REFERENCE_CACHE_SIZE = 200_000  # replies (~1 KB each): bounds a very long live session


class DPOTrainer(Trainer):
    method = "dpo"

    def __init__(self, model, tokenizer, config=None):
        super().__init__(model, tokenizer, config)
        self.reference_cache: dict[str, tuple[float, float]] = {}

    def completion_logps(self, packed) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) summed log-probs per pair under the current adapter."""
        batch, index = packed
        return _per_pair(pair_token_logps(self.model, **batch), batch["segments"], index)

    def reference_logps(self, examples: list[dict], packed=None) -> list[tuple[float, float]]:
        """(chosen, rejected) reference log-probs: the base with the adapter disabled.

        Cached per reply, not per pair: the live loop scores a round's candidates as the person reads
        them, before it knows which one will be chosen."""
        keys = [(self._key(ex, "chosen"), self._key(ex, "rejected")) for ex in examples]
        missing = [i for i, (c, r) in enumerate(keys) if c not in self.reference_cache or r not in self.reference_cache]
        if missing:
            if packed is None or len(missing) < len(examples):
                packed = packed_groups(self.tokenizer, [examples[i] for i in missing], self.config.max_length, self.device)
            was_training = self.model.training
            self.model.eval()
            policy = getattr(self.model, "module", self.model)  # under DistributedDataParallel in fit()
            with torch.inference_mode(), policy.disable_adapter():
                chosen, rejected = self.completion_logps(packed)
            self.model.train(was_training)
            for i, c, r in zip(missing, chosen.tolist(), rejected.tolist()):
                self.reference_cache[keys[i][0]], self.reference_cache[keys[i][1]] = c, r
        values = [(self.reference_cache[c], self.reference_cache[r]) for c, r in keys]
        while len(self.reference_cache) > REFERENCE_CACHE_SIZE:  # oldest first: dicts keep insertion order
            del self.reference_cache[next(iter(self.reference_cache))]
        return values

    def _key(self, example: dict, reply: str) -> str:
        """What a reply's reference log-prob depends on: the prompt, the reply and the truncation. (The
        live loop swaps `config` between updates; the base weights never change.) Each
        reply is truncated on its own; with a plain-text prompt, where tokens can merge across the
        boundary, the split point depends on the other reply too, so it is part of the key."""
        cfg = self.config
        other = None if isinstance(example["prompt"], list) else example["rejected" if reply == "chosen" else "chosen"]
        return json.dumps([example["prompt"], example[reply], other, cfg.max_length], sort_keys=True)

    def normalisers(self, examples: list[dict]) -> dict:
        """The pairs, and the chosen replies' tokens (the sft term is a mean over them)."""
        chosen = sum(len(c) for _, (c, _r) in map(self._tokenized, examples))
        return {"pairs": len(examples), "chosen_tokens": max(chosen, 1)}

    def parts(self, examples: list[dict], size: int) -> list[list[dict]]:
        """A step's parts hold whole prompts: the pairs of one prompt share a packed row, so a part takes
        the next prompt's pairs while it has fewer than `size` pairs (a pick of the best of 4, 3 pairs on
        4 replies, is fewer tokens than 2 pairs on their own rows)."""
        by_prompt: dict[str, list[dict]] = {}
        for ex in examples:
            by_prompt.setdefault(json.dumps(ex["prompt"], sort_keys=True), []).append(ex)
        parts: list[list[dict]] = [[]]
        for pairs in by_prompt.values():
            if len(parts[-1]) >= size:
                parts.append([])
            parts[-1].extend(pairs)
        return parts

    def _tokenized(self, example: dict):
        return tokenize_pair(self.tokenizer, example["prompt"], [example["chosen"], example["rejected"]],
                             self.config.max_length)

    def loss(self, examples: list[dict], norm: dict | None = None):
        """The weighted sum of the config's loss terms (TRL's `loss_type` list and `loss_weights`).

        Pair terms are means over `norm["pairs"]`, the sft term over `norm["chosen_tokens"]`
        (default: these examples'), and so are the metrics, so parts of a batch sum to it."""
        cfg = self.config
        packed = packed_groups(self.tokenizer, examples, cfg.max_length, self.device)
        batch, index = packed
        if any("ref_chosen_logps" not in ex for ex in examples):
            refs = self.reference_logps(examples, packed)
            examples = [{**ex, "ref_chosen_logps": c, "ref_rejected_logps": r} for ex, (c, r) in zip(examples, refs)]
        token_logps = pair_token_logps(self.model, **batch)
        chosen, rejected = _per_pair(token_logps, batch["segments"], index)
        chosen_length, rejected_length = _per_pair(batch["segments"] > 0, batch["segments"], index)
        ref_chosen = torch.tensor([ex["ref_chosen_logps"] for ex in examples], device=self.device)
        ref_rejected = torch.tensor([ex["ref_rejected_logps"] for ex in examples], device=self.device)
        summed = chosen, rejected, ref_chosen, ref_rejected
        if norm is None:
            norm = {"pairs": len(examples), "chosen_tokens": max(int(chosen_length.sum()), 1)}
        lengths = [chosen_length.clamp(min=1), rejected_length.clamp(min=1)] * 2  # policy's, then ref's
        pairs = norm["pairs"]
        metrics, loss = {}, 0.0
        for term, weight in zip(cfg.loss_type, cfg.loss_weights, strict=True):
            if term == SFT_TERM:  # the chosen reply's NLL, a mean over its tokens in every pair (as TRL)
                value = -chosen.sum() / norm["chosen_tokens"]
                metrics["nll"] = value.item()
            elif term == SFT_SUFFIX_TERM:  # ... past the prefix it shares with the rejected reply, a mean per pair
                weights = _suffix_weights(batch["input_ids"], batch["segments"], index)
                value = -(token_logps.float() * weights).sum() / pairs
                metrics["nll"] = value.item()
            else:
                logps = [s / n for s, n in zip(summed, lengths)] if term in LENGTH_AVERAGED else summed
                value = dpo_loss(*logps, cfg.beta, term, cfg.label_smoothing, cfg.discopop_tau)[0].sum() / pairs
            loss = loss + weight * value
        chosen_rewards = cfg.beta * (chosen - ref_chosen).detach()  # on summed log-probs, as TRL reports them
        rejected_rewards = cfg.beta * (rejected - ref_rejected).detach()
        margin = chosen_rewards - rejected_rewards
        metrics.update({
            "rewards/chosen": chosen_rewards.sum().item() / pairs,
            "rewards/rejected": rejected_rewards.sum().item() / pairs,
            "rewards/margins": margin.sum().item() / pairs,
            "rewards/accuracies": (margin > 0).sum().item() / pairs,
            "logps/chosen": chosen.detach().sum().item() / pairs,
            "logps/rejected": rejected.detach().sum().item() / pairs,
            "tokens": int((batch["segments"] >= 0).sum()),
        })
        return loss, metrics


def _per_pair(values: torch.Tensor, segments: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected): per-token `values` summed over each pair's chosen and rejected reply (the
    packed rows' segments; index[k] = pair k's row, chosen segment, rejected segment)."""
    values = values.to(torch.float32) * (segments > 0)
    sums = torch.zeros(segments.shape[0], int(segments.max()) + 1, dtype=values.dtype, device=values.device)
    sums = sums.scatter_add(1, segments.clamp(min=0), values)  # [rows, replies + 1]: column s sums segment s
    return sums[index[:, 0], index[:, 1]], sums[index[:, 0], index[:, 2]]


def _suffix_weights(input_ids: torch.Tensor, segments: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-token weights [rows, T] that turn a sum of log-probs into the sum over pairs of the mean log-prob
    of the chosen reply's tokens from the first one where it parts from the rejected reply (all of them,
    should it part nowhere). Found on the CPU, where the ids are compared pair by pair without a device sync."""
    ids, segments = input_ids.cpu(), segments.cpu()
    weights = torch.zeros(ids.shape, dtype=torch.float32)
    for row, chosen, rejected in index.tolist():
        at = (segments[row] == chosen).nonzero().squeeze(-1)
        own, other = ids[row, at], ids[row][segments[row] == rejected]
        n = min(len(own), len(other))
        parts = (own[:n] != other[:n]).nonzero()
        shared = int(parts[0]) if len(parts) else n
        trained = at[shared:] if shared < len(at) else at
        weights[row, trained] += 1.0 / len(trained)  # a chosen reply shared by several pairs sums their weights
    return weights.to(input_ids.device)
