"""Log-probabilities of completions, projecting onto the vocabulary only where needed.

The LM head (hidden -> vocabulary) is the most expensive layer of a small model and its
output the largest tensor: it runs here only at the positions that predict a completion
token, never for the prompt.
"""

from __future__ import annotations

import torch

CHUNK = 1024  # positions projected at once: bounds the [positions, vocab] tensor


def causal_lm(model):
    """The transformers CausalLM inside a model (unwrapping PEFT and accelerate)."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def hidden_states(model, input_ids, attention_mask) -> torch.Tensor:
    """Last hidden states [batch, T, hidden] of the backbone; LoRA layers stay active."""
    lm = causal_lm(model)
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, lm.base_model_prefix)
    # Positions count real tokens only, so left or right padding give the same numbers.
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def token_logps(model, input_ids, attention_mask, completion_mask, hidden=None) -> torch.Tensor:
    """Per-token log-probs [batch, T]: entry t scores input_ids[t] with the logits at t-1.

    Entries where completion_mask is 0 (and position 0) are 0.
    """
    if hidden is None:
        hidden = hidden_states(model, input_ids, attention_mask)
    head = causal_lm(model).get_output_embeddings()
    scored = completion_mask[:, 1:].bool()
    rows, cols = scored.nonzero(as_tuple=True)
    picked = hidden[:, :-1][rows, cols]  # hidden states that predict completion tokens
    targets = input_ids[:, 1:][rows, cols]
    parts = []
    for start in range(0, picked.shape[0], CHUNK):
        logits = head(picked[start:start + CHUNK]).float()
        parts.append(torch.log_softmax(logits, -1).gather(-1, targets[start:start + CHUNK, None]).squeeze(-1))
    values = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
    out = torch.zeros(input_ids.shape, dtype=values.dtype, device=values.device)
    out[rows, cols + 1] = values
    return out


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Sum of the log-probs of the completion tokens, one value per sequence."""
    return token_logps(model, input_ids, attention_mask, completion_mask).sum(-1)
