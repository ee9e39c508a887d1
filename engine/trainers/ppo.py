"""PPO with a value head, step by step: rewards from anywhere (a person, a rule, a model).

`PPOTrainer.step(prompts, responses, scores)` is the step-wise API TRL removed in 0.12:
token ids in, one scalar score per response, one PPO update out. The recipe is Ziegler
et al. 2019 as TRL's PPO trainers ran it:

  old log-probs and values (current policy), reference log-probs (adapter disabled)
  per-token reward = -kl_coef * KL, plus the score at the last response token
  GAE advantages (whitened) and returns
  ppo_epochs x shuffled mini-batches of clipped policy + vf_coef * clipped value loss
  optional adaptive KL coefficient steering the KL towards target_kl

Policy, reference and value head share one copy of the base weights. The model stays in
eval mode (no dropout), so the first mini-batch sees a probability ratio of exactly 1.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from engine.data import collate, tokenize_pair
from engine.protocol import DataError, DictConfig, NonFiniteLoss
from engine.logprobs import token_logps
from engine.losses import KL_ESTIMATORS, gae, kl_penalty, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss
from engine.value_head import ValueHead, logps_and_values
from engine.models import gradient_checkpointing
from engine.trainers.base import adamw, average_gradients


@dataclass
class PPOConfig(DictConfig):
    lr: float = 5e-5
    batch_size: int = 8  # rollouts per step (headless fit)
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    kl_coef: float = 0.05  # initial coefficient of the per-token KL penalty
    target_kl: float | None = None  # adaptive KL: steer the per-sequence KL towards this
    kl_horizon: int = 10000
    kl_estimator: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    max_new_tokens: int = 32
    temperature: float = 1.0  # sampling only: the objective scores tokens at temperature 1 (as TRL <= 0.11)
    top_p: float = 1.0
    max_length: int | None = 1024
    seed: int = 0
    save_steps: int | None = None  # fit(): write output/checkpoint-N every N steps
    eval_steps: int | None = None  # fit(): evaluate the held-out prompts every N steps (and at the end)


class PPOTrainer:
    method = "ppo"  # what its checkpoints record

    def __init__(self, policy, tokenizer, config: PPOConfig | None = None, value_head: ValueHead | None = None):
        self.model = policy  # a PeftModel: base frozen, adapter trainable
        self.tokenizer = tokenizer
        self.config = config or PPOConfig()
        if self.config.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.config.kl_estimator!r}: choose one of {', '.join(KL_ESTIMATORS)}")
        self.value_head = value_head if value_head is not None else ValueHead.for_model(policy)
        self.params = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = adamw(self.params, self.config)
        self.kl_coef = self.config.kl_coef
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.steps = 0
        self.num_processes = 1  # fit() under `accelerate launch`: gradients are averaged over this many

    @property
    def device(self):
        return next(self.model.parameters()).device

    # --- the update -----------------------------------------------------------------

    def step(self, prompts: list[list[int]], responses: list[list[int]], scores) -> dict:
        """One PPO update from (prompt ids, response ids, score) triples; returns its metrics."""
        started = time.perf_counter()
        cfg = self.config
        scores = torch.as_tensor(scores, dtype=torch.float32, device=self.device).flatten()
        if not len(prompts) == len(responses) == len(scores) or not len(prompts):
            raise ValueError(f"step needs as many prompts, responses and scores ({len(prompts)}, {len(responses)}, {len(scores)}), at least one")
        if any(len(r) == 0 for r in responses):
            raise ValueError("every response needs at least one token: the score goes on its last one")
        batch = collate([(list(p), list(r)) for p, r in zip(prompts, responses)], self.tokenizer.pad_token_id, self.device)
        mask = batch["completion_mask"].clone()
        mask[:, 0] = 0  # no log-prob for the first position
        size = len(scores)

        if not cfg.target_kl:  # a fixed coefficient follows the config (the server may swap it)
            self.kl_coef = cfg.kl_coef
        self.model.eval()
        with torch.no_grad():
            old_logps, old_values = logps_and_values(self.model, self.value_head, **batch)
            with self.model.disable_adapter():
                ref_logps = token_logps(self.model, **batch)
            kl = kl_penalty(old_logps, ref_logps, cfg.kl_estimator) * mask
            rewards = -self.kl_coef * kl
            last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
            rewards[torch.arange(size, device=mask.device), last] += scores
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages and size > 1:  # one sequence alone would lose its score's sign
                advantages = masked_whiten(advantages, mask)

        snapshot = self._snapshot()
        stats = defaultdict(list)
        mini = max(1, min(cfg.mini_batch_size, size))
        if gradient_checkpointing(self.model):  # it recomputes only in training mode (the layers have no dropout)
            self.model.train()
        try:
            for _ in range(cfg.ppo_epochs):
                order = torch.randperm(size, generator=self.generator).to(self.device)
                for start in range(0, size, mini):
                    rows = order[start:start + mini]
                    width = int(batch["attention_mask"][rows].sum(-1).max())  # drop shared right padding
                    part = {k: v[rows, :width] for k, v in batch.items()}
                    logps, values = logps_and_values(self.model, self.value_head, **part)
                    m = mask[rows, :width]
                    policy_loss, clipfrac = ppo_policy_loss(logps, old_logps[rows, :width], advantages[rows, :width], m, cfg.clip_range)
                    value_loss = ppo_value_loss(values, old_values[rows, :width], returns[rows, :width], m, cfg.clip_range_value)
                    loss = policy_loss + cfg.vf_coef * value_loss
                    if not torch.isfinite(loss):
                        raise NonFiniteLoss(f"PPO loss is {loss.item()}: update discarded")
                    loss.backward()
                    average_gradients(self.params, self.num_processes)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    if not torch.isfinite(grad_norm):
                        raise NonFiniteLoss(f"gradient norm is {grad_norm.item()}: update discarded")
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        stats["policy_loss"].append(policy_loss.item())
                        stats["value_loss"].append(value_loss.item())
                        stats["clipfrac"].append(clipfrac.item())
                        stats["approx_kl"].append(masked_mean(0.5 * (logps - old_logps[rows, :width]) ** 2, m).item())
                        stats["grad_norm"].append(grad_norm.item())
        except NonFiniteLoss:
            self._restore(snapshot)  # all or nothing: earlier mini-batches are undone too
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()

        kl_per_sequence = kl.sum(-1)
        metrics = {
            "score": scores.mean().item(),
            "kl": kl_per_sequence.mean().item(),
            "kl_coef": self.kl_coef,
            "reward": (scores - self.kl_coef * kl_per_sequence).mean().item(),
            "response_length": mask.sum(-1).float().mean().item(),
            "entropy": (-old_logps * mask).sum(-1).mean().item(),
            **{name: sum(v) / len(v) for name, v in stats.items()},
        }
        if cfg.target_kl:  # adaptive controller of Ziegler et al. 2019
            kl_mean = metrics["kl"]
            if self.num_processes > 1:  # every process keeps the same coefficient
                pooled = torch.tensor([kl_mean], device=self.device)
                torch.distributed.all_reduce(pooled)
                kl_mean = pooled.item() / self.num_processes
            error = max(-0.2, min(0.2, kl_mean / cfg.target_kl - 1))
            self.kl_coef *= 1 + error * size / cfg.kl_horizon
        self.steps += 1
        metrics["seconds"] = time.perf_counter() - started
        return metrics

    def step_examples(self, examples: list[dict]) -> dict:
        """`step` from TRL-format rows {prompt, completion, score} (what the engine server receives)."""
        prompts, responses, scores = [], [], []
        for number, ex in enumerate(examples, 1):
            missing = [k for k in ("prompt", "completion", "score") if k not in ex]
            if missing:
                raise DataError(f"ppo example {number}: missing {', '.join(missing)}")
            score = ex["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise DataError(f"ppo example {number}: score must be a number, got {score!r}")
            prompt, completion = _same_format(ex["prompt"], ex["completion"])
            prompt_ids, (completion_ids,) = tokenize_pair(self.tokenizer, prompt, [completion], self.config.max_length)
            if not completion_ids:
                raise DataError(f"ppo example {number}: empty completion")
            prompts.append(prompt_ids)
            responses.append(completion_ids)
            scores.append(float(score))
        return self.step(prompts, responses, scores)

    # --- the headless loop ------------------------------------------------------------

    def fit_online(self, prompts: list, reward, steps: int, on_step=None, **options) -> list[dict]:
        """The headless loop (engine/rollouts.py): each step samples one reply to each of batch_size
        prompts, scores them with `reward(prompts, replies)` and takes one PPO step; `options` are
        rollouts.fit's (checkpoints, resume, evaluation, logging).

        Under `accelerate launch` each process rolls out batch_size replies to its own slots of the
        step's prompts and the gradients of every optimizer step are averaged over processes, so all
        processes keep the same adapter and value head."""
        from engine import rollouts
        from engine.trainers.base import process_state

        self.num_processes = process_state().num_processes
        return rollouts.fit(self, prompts, reward, steps, per_step=self.config.batch_size * self.num_processes, n=1,
                            learn=self.learn, on_step=on_step, **options)

    def learn(self, rolled: list) -> dict:
        """One PPO step on rollouts of one reply each (engine/rollouts.py)."""
        return self.step([r.prompt_ids for r in rolled], [r.completions[0] for r in rolled],
                         [r.scores[0] for r in rolled])

    def save(self, folder, metadata: dict | None = None):
        from engine.versions import save_adapter

        return save_adapter(self.model, folder, {"method": self.method, "config": self.config.to_dict(),
                                                 "kl_coef": self.kl_coef, **(metadata or {})},
                            value_head=self.value_head)

    # --- helpers ----------------------------------------------------------------------

    def _snapshot(self) -> tuple[dict, dict]:
        from engine.versions import adapter_state

        return adapter_state(self.model), {k: v.detach().clone() for k, v in self.value_head.state_dict().items()}

    def _restore(self, snapshot) -> None:
        from engine.versions import reset_adapter

        reset_adapter(self.model, snapshot[0])
        self.value_head.load_state_dict(snapshot[1])


def _same_format(prompt, completion):
    """A conversational prompt with a plain-text completion (or the reverse) made consistent."""
    if isinstance(prompt, list) and isinstance(completion, str):
        return prompt, [{"role": "assistant", "content": completion}]
    if isinstance(prompt, str) and isinstance(completion, list):
        return prompt, completion[-1]["content"]
    return prompt, completion
