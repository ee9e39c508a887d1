"""The training objectives as pure tensor math: no model, no I/O.

Each function matches the formula of the paper it names and TRL's implementation of it,
so tests can compare them line by line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.logprobs import token_logps

DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO losses and the implicit rewards beta * (policy - reference).

    sigmoid: DPO (Rafailov et al. 2023); label_smoothing > 0 is conservative DPO (cDPO).
    hinge:   SLiC (Zhao et al. 2023).
    ipo:     IPO (Azar et al. 2023), beta is the regulariser tau. Pass length-averaged
             log-probs for the per-token form TRL uses.
    robust:  robust DPO (Chowdhury et al. 2024), label_smoothing is the flip rate.
    """
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = (
            -F.logsigmoid(beta * logits) * (1 - label_smoothing)
            - F.logsigmoid(-beta * logits) * label_smoothing
        )
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        losses = (
            -F.logsigmoid(beta * logits) * (1 - label_smoothing)
            + F.logsigmoid(-beta * logits) * label_smoothing
        ) / (1 - 2 * label_smoothing)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}: choose one of {', '.join(DPO_LOSS_TYPES)}")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


def sft_loss(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Mean token cross-entropy over completion tokens only."""
    logps = token_logps(model, input_ids, attention_mask, completion_mask)
    count = completion_mask[:, 1:].sum().clamp(min=1)
    return -logps.sum() / count
