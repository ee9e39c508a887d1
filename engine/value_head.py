"""PPO's critic: a scalar value head on the policy's last hidden states.

This plays the part of TRL's old `AutoModelForCausalLMWithValueHead` without a second
model: the policy (base + LoRA), the reference (the same base, adapter disabled) and the
value head all read one copy of the base weights. One backbone pass gives both the
log-probs and the values. The head is saved with each adapter version
(engine.versions.save_adapter(..., value_head=head) -> value_head.safetensors).
"""

from __future__ import annotations

import torch
from torch import nn

from engine.logprobs import causal_lm, hidden_states, token_logps


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        # A small init keeps the first values near 0 (as the critic init of TRL's PPO).
        nn.init.normal_(self.summary.weight, std=1 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [...]; kept in float32 whatever the backbone's dtype."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)

    @classmethod
    def for_model(cls, model) -> "ValueHead":
        """A fresh head sized for `model`, on its device."""
        lm = causal_lm(model)
        head = cls(lm.config.get_text_config().hidden_size)
        return head.to(next(lm.parameters()).device)


def logps_and_values(model, value_head: ValueHead, input_ids, attention_mask, completion_mask):
    """Per-token log-probs and values [batch, T] from one backbone pass.

    Entry t of both belongs to the action "emit input_ids[t]": its log-prob comes from the
    logits at t-1 and its value V(s_t) from the hidden state at t-1 (the state before the
    token is chosen). Entries outside the completion are 0.
    """
    hidden = hidden_states(model, input_ids, attention_mask)
    logps = token_logps(model, input_ids, attention_mask, completion_mask, hidden=hidden)
    values = torch.zeros_like(logps)
    values[:, 1:] = value_head(hidden[:, :-1]) * completion_mask[:, 1:]
    return logps, values
