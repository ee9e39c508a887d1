"""The training objectives as pure tensor math: no model, no I/O.

Each function matches the formula of the paper it names and TRL's implementation of it,
so tests can compare them line by line.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.logprobs import token_logps
from engine.protocol import DPO_LOSS_TYPES

LENGTH_AVERAGED = ("ipo", "sigmoid_norm")  # take per-token average log-probs, as TRL averages them


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example losses of one DPO loss type, and the implicit rewards beta * (policy - reference).

    The formulas of TRL 1.16's DPOTrainer. Log-probs are summed over each reply, except for
    the LENGTH_AVERAGED types, which take per-token averages. `label_smoothing` is used where
    TRL uses it, and by sigmoid:
    sigmoid:      DPO (Rafailov et al. 2023); label_smoothing > 0 is conservative DPO (cDPO),
                  as TRL had it before 1.0 (TRL 1.16's sigmoid ignores it).
    hinge:        SLiC (Zhao et al. 2023).
    ipo:          IPO (Azar et al. 2023); beta is the regulariser tau.
    exo_pair:     EXO (Ji et al. 2024); label_smoothing is its epsilon, > 0.
    nca_pair:     NCA (Chen et al. 2024).
    robust:       robust DPO (Chowdhury et al. 2024); label_smoothing is the flip rate, in [0, 0.5).
    bco_pair:     BCO on pairs (Jung et al. 2024), without a reward shift (TRL 1.16 keeps none).
    sppo_hard:    SPPO with hard probabilities (Wu et al. 2024).
    aot:          AOT (Melnyk et al. 2024): cDPO on the batch-sorted policy and reference log-ratios.
    aot_unpaired: AOT on the batch-sorted chosen and rejected log-ratios.
    apo_zero, apo_down: APO (D'Oosterlinck et al. 2024).
    discopop:     DiscoPOP (Lu et al. 2024), with temperature discopop_tau.
    sigmoid_norm: DPO on length-averaged log-probs.
    aot and aot_unpaired sort across the batch: their per-example losses are per rank, not per pair.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    if loss_type in ("sigmoid", "aot", "aot_unpaired"):
        if loss_type == "aot":
            logits = (torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0).values
                      - torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0).values)
        elif loss_type == "aot_unpaired":
            logits = torch.sort(chosen_logratios, dim=0).values - torch.sort(rejected_logratios, dim=0).values
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif loss_type == "sigmoid_norm":
        losses = -F.logsigmoid(beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "exo_pair":
        # KL(softmax of the implicit rewards || [1 - eps, eps]) over {chosen, rejected}
        losses = (torch.sigmoid(beta * logits) * (F.logsigmoid(beta * logits) - math.log1p(-label_smoothing))
                  + torch.sigmoid(-beta * logits) * (F.logsigmoid(-beta * logits) - math.log(label_smoothing)))
    elif loss_type == "nca_pair":
        losses = (-F.logsigmoid(beta * chosen_logratios) - 0.5 * F.logsigmoid(-beta * chosen_logratios)
                  - 0.5 * F.logsigmoid(-beta * rejected_logratios))
    elif loss_type == "robust":
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  + F.logsigmoid(-beta * logits) * label_smoothing) / (1 - 2 * label_smoothing)
    elif loss_type == "bco_pair":
        losses = -F.logsigmoid(beta * chosen_logratios) - F.logsigmoid(-beta * rejected_logratios)
    elif loss_type == "sppo_hard":
        losses = (chosen_logratios - 0.5 / beta) ** 2 + (rejected_logratios + 0.5 / beta) ** 2
    elif loss_type == "apo_zero":  # raise the chosen reply, lower the rejected one
        losses = 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "apo_down":  # lower both, the rejected one more
        losses = torch.sigmoid(beta * chosen_logratios) + 1 - torch.sigmoid(beta * logits)
    elif loss_type == "discopop":  # a blend of the logistic and exponential losses, by the log-ratio
        mix = torch.sigmoid(beta * logits / discopop_tau)
        losses = -F.logsigmoid(beta * logits) * (1 - mix) + torch.exp(-beta * logits) * mix
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: choose one of {', '.join(DPO_LOSS_TYPES)}")
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return losses, chosen_rewards, rejected_rewards


def kto_kl(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the batch's mean log-ratio on mismatched (prompt, completion) pairs, detached.

    The pairs are the batch's own completions, each after another row's prompt (TRL rotates
    them by one). Averaged over processes (as TRL gathers it) before kto_loss clamps it at 0.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example KTO losses (Ethayarajh et al. 2024, eq. 7), as TRL's KTOTrainer computes them.

    With r = policy - reference log-prob of the completion and z = max(kl, 0) (kto_kl):
    desirable: w_d * (1 - sigmoid(beta * (r - z))); undesirable: w_u * (1 - sigmoid(beta * (z - r))).
    """
    logratios = policy_logps - ref_logps
    kl = kl.detach().clamp(min=0)
    desirable = desirable.bool()
    return torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )


def sft_loss(model, input_ids, attention_mask, completion_mask, count=None) -> torch.Tensor:
    """Mean token cross-entropy over completion tokens only (divided by `count`, default their number)."""
    logps = token_logps(model, input_ids, attention_mask, completion_mask)
    if count is None:
        count = completion_mask[:, 1:].sum().clamp(min=1)
    return -logps.sum() / count


# --- PPO and reward models -------------------------------------------------------------
# Per-token tensors are [batch, T] with a 0/1 mask; positions where the mask is 0 (prompt,
# padding) take no part. Formulas follow the PPO-for-LMs recipe of Ziegler et al. 2019 as
# TRL's PPO trainers implemented it (GAE, clipped surrogate, clipped value loss x 0.5).


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries; masked-out entries become 0."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = (((values - mean) ** 2) * mask).sum() / (count - 1).clamp(min=1)  # unbiased, as TRL
    return (values - mean) * torch.rsqrt(variance + eps) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), per token.

    delta_t = r_t + gamma * V_next - V_t and A_t = delta_t + gamma * lam * A_next, where
    "next" is the next position whose mask is 1 (V = 0 and A = 0 past the last one). Returns
    (advantages, returns = advantages + values), both 0 where the mask is 0.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        live = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * live
        # A masked position passes its successor's value and advantage through unchanged.
        next_value = torch.where(live.bool(), values[:, t], next_value)
        next_advantage = torch.where(live.bool(), advantage, next_advantage)
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_range: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017) as a loss, and the fraction clipped.

    loss = mean over masked tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).detach()
    return loss, clipfrac


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip_range_value: float = 0.2) -> torch.Tensor:
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (clip(V, V_old +- eps) - R)^2)."""
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    losses = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(losses, mask)


KL_ESTIMATORS = ("k1", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens (Schulman's k1, k3).

    k1 = log p - log q (unbiased, can be negative); k3 = (q/p - 1) - log(q/p) (unbiased, >= 0).
    """
    log_ratio = ref_logprobs - logprobs  # log q/p
    if kind == "k1":
        return -log_ratio
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}: choose one of {', '.join(KL_ESTIMATORS)}")


def pairwise_reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                         margin: torch.Tensor | float | None = None) -> torch.Tensor:
    """Bradley-Terry loss of a reward model, mean of -logsigmoid(chosen - rejected - margin)."""
    difference = chosen_scores - rejected_scores
    if margin is not None:
        difference = difference - margin
    return -F.logsigmoid(difference).mean()


# --- GRPO --------------------------------------------------------------------------------
# Group relative policy optimisation (Shao et al. 2024) as TRL 1.16's GRPOTrainer computes
# it: no value head, each completion's advantage is its reward relative to the other
# completions of the same prompt; the policy loss is PPO's clipped ratio per token plus
# beta times the k3 KL estimate to the reference.

GRPO_LOSS_TYPES = ("dapo", "grpo")  # TRL's names for how per-token losses are averaged


def group_advantages(scores: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """Advantages of scores [groups, N]: score - group mean, over the group's std (+ 1e-4) with `scale`.

    The std has Bessel's correction and the 1e-4 is TRL's, so a group of equal scores gets 0.
    """
    scores = scores.float()
    advantages = scores - scores.mean(-1, keepdim=True)
    if scale:
        advantages = advantages / (scores.std(-1, keepdim=True) + 1e-4)
    return advantages


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "dapo",
              num_tokens: torch.Tensor | float | None = None,
              use_bias_correction_kl: bool = True) -> tuple[torch.Tensor, dict]:
    """GRPO's policy loss from per-token log-probs [B, T] and one advantage per completion [B].

    per token: -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * k3 KL,
    ratio = exp(logps - old_logps) (old_logps: the sampling policy's; logps.detach() on the
    first pass, where the ratio is 1 and only its gradient counts). With
    `use_bias_correction_kl` (TRL 1.16's default) the KL term is multiplied by the ratio too,
    which makes its gradient the unbiased reverse-KL gradient (DeepSeek-V3.2). Aggregation (TRL's
    loss_type): `dapo` (TRL 1.16's default) sums over every completion token and divides by
    `num_tokens`, the tokens of the whole batch (over all processes, divided by their number;
    default: this batch's); `grpo` averages each completion over its own tokens, then the
    completions. Returns (loss, metrics: the mean KL and the fraction of tokens clipped).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}: choose one of {', '.join(GRPO_LOSS_TYPES)}")
    mask = mask.to(logps.dtype)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.to(logps.dtype)[:, None]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        kl = kl_penalty(logps, ref_logps, "k3")
        per_token = per_token + beta * (kl * ratio if use_bias_correction_kl else kl)
    if loss_type == "dapo":
        total = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=logps.dtype, device=logps.device)
        loss = (per_token * mask).sum() / total.clamp(min=1.0)
    else:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    was_clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon_high) & (advantages > 0))
    metrics = {"kl": masked_mean(kl, mask).detach() if kl is not None else torch.zeros(()),
               "clip_ratio": masked_mean(was_clipped.to(logps.dtype), mask).detach()}
    return loss, metrics
