"""GRPO: N scored completions of one prompt make a group; no value head, no critic.

A row is a group `{prompt, completions: [N replies], scores: [N numbers]}`: live (`step`), a
person's 1-5 scores of the N candidates of a round; in batch (`fit`, `replay --method grpo`),
a saved session's scored groups; online (`fit_online`, `train grpo`), a reward function's
scores of N completions sampled as it trains. Each completion's advantage is its score relative to its group
(engine.losses.group_advantages); the loss is TRL 1.16's GRPOTrainer loss
(engine.losses.grpo_loss: clipped ratio per token, beta x k3 KL to the reference, TRL's
default aggregation `dapo`). The reference is the same base with the adapter disabled.

Repeated steps on the same rows (a live update's `steps`, TRL's `num_iterations`) keep the
first step's log-probs as the old policy's and score the reference once, so the ratio and
its clipping act as in TRL.
"""

from __future__ import annotations

import torch

from engine.data import collate, tokenize_pair
from engine.logprobs import token_logps
from engine.losses import GRPO_LOSS_TYPES, group_advantages, grpo_loss
from engine.protocol import GRPOConfig
from engine.trainers.base import Trainer, process_state
from engine.trainers.ppo import _same_format


class GRPOTrainer(Trainer):
    method = "grpo"

    def __init__(self, model, tokenizer, config: GRPOConfig | None = None):
        super().__init__(model, tokenizer, config or GRPOConfig())
        self._prepared: tuple[list, dict] | None = None  # (rows, tensors) of the last step

    def encode(self, rows: list[dict]) -> list[tuple[list[int], list[list[int]], list[float]]]:
        """Group rows as (prompt ids, [completion ids], scores), tokenized as TRL's data (engine.data)."""
        groups = []
        for row in rows:
            prompt = row["prompt"]
            completions = [_same_format(prompt, c)[1] for c in row["completions"]]
            prompt_ids, completion_ids = tokenize_pair(self.tokenizer, prompt, completions, self.config.max_length)
            groups.append((prompt_ids, completion_ids, [float(s) for s in row["scores"]]))
        return groups

    def prepare(self, groups: list[tuple]) -> dict:
        """The step's tensors: padded ids, the completion mask, advantages and the reference's log-probs."""
        cfg = self.config
        if cfg.loss_type not in GRPO_LOSS_TYPES:
            raise ValueError(f"loss_type {cfg.loss_type!r}: choose one of {', '.join(GRPO_LOSS_TYPES)}")
        sequences = [(list(p), list(c)) for p, completions, _ in groups for c in completions]
        batch = collate(sequences, self.tokenizer.pad_token_id, self.device)
        scores = [torch.tensor(s, dtype=torch.float32) for _, _, s in groups]
        advantages = torch.cat([group_advantages(s[None], cfg.scale_rewards)[0] for s in scores]).to(self.device)
        mask = batch["completion_mask"].clone()
        mask[:, 0] = 0  # position 0 has no log-prob
        ref = None
        if cfg.beta != 0.0:
            with torch.no_grad(), self.model.disable_adapter():
                ref = token_logps(self.model, **batch)
        return {**batch, "mask": mask, "advantages": advantages, "ref_logps": ref, "old_logps": None,
                "scores": torch.cat(scores)}

    def loss(self, examples: list):
        """`examples`: group rows, or (prompt ids, [completion ids], scores) triples."""
        if self._prepared is None or self._prepared[0] is not examples:  # a new update: old and reference afresh
            groups = self.encode(examples) if examples and isinstance(examples[0], dict) else examples
            self._prepared = (examples, self.prepare(groups))
        batch = self._prepared[1]
        logps = token_logps(self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        if batch["old_logps"] is None:  # the first pass over these completions: the policy that sampled them
            batch["old_logps"] = logps.detach()
        num_tokens = batch["mask"].sum().float()
        if self.world_size > 1:  # dapo divides by the tokens of every process's batch, as TRL's num_items_in_batch
            torch.distributed.all_reduce(num_tokens)
            num_tokens = num_tokens / self.world_size
        cfg = self.config
        loss, stats = grpo_loss(logps, batch["old_logps"], batch["ref_logps"], batch["advantages"], batch["mask"],
                                beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                                loss_type=cfg.loss_type, num_tokens=num_tokens,
                                use_bias_correction_kl=cfg.use_bias_correction_kl)
        scores = batch["scores"]
        return loss, {"kl": stats["kl"].item(), "clip_ratio": stats["clip_ratio"].item(),
                      "score": scores.mean().item(), "score_std": scores.std().item() if len(scores) > 1 else 0.0,
                      "completion_length": batch["mask"].sum(-1).float().mean().item(),
                      "tokens": int(batch["mask"].sum())}

    def fit_online(self, prompts: list, reward, steps: int, on_step=None, **options) -> list[dict]:
        """Headless, online (engine/rollouts.py): each step samples `num_generations` completions of
        `prompts_per_step` prompts, scores them with `reward(prompts, responses)` and takes one optimizer
        step; `options` are rollouts.fit's (checkpoints, resume, evaluation, logging).

        Under `accelerate launch` / torchrun the step's prompts are split over the processes (every
        process draws the same prompts and seeds, and generates its share), gradients are averaged:
        the result is that of one process taking the whole step.
        """
        from engine import rollouts

        self.world_size = process_state().num_processes
        return rollouts.fit(self, prompts, reward, steps, per_step=self.config.prompts_per_step,
                            n=self.config.num_generations, learn=self.learn, on_step=on_step, **options)

    def learn(self, rolled: list) -> dict:
        """One optimizer step on rollouts of one group each (engine/rollouts.py)."""
        return self.step([(r.prompt_ids, r.completions, r.scores) for r in rolled])

    def save(self, folder, metadata: dict | None = None):
        return super().save(folder, {"method": self.method, **(metadata or {})})
