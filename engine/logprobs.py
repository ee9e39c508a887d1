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


def hidden_states(model, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
    """Last hidden states [batch, T, hidden] of the backbone; LoRA layers stay active."""
    lm = causal_lm(model)
    backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, lm.base_model_prefix)
    if position_ids is None:  # positions count real tokens only: left or right padding give the same numbers
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def token_logps(model, input_ids, attention_mask, completion_mask, hidden=None) -> torch.Tensor:
    """Per-token log-probs [batch, T]: entry t scores input_ids[t] with the logits at t-1.

    Entries where completion_mask is 0 (and position 0) are 0.
    """
    if hidden is None:
        hidden = hidden_states(model, input_ids, attention_mask)
    rows, cols = completion_mask[:, 1:].bool().nonzero(as_tuple=True)
    values = project(model, hidden[:, :-1][rows, cols], input_ids[:, 1:][rows, cols])
    out = torch.zeros(input_ids.shape, dtype=values.dtype, device=values.device)
    out[rows, cols + 1] = values
    return out


def project(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target | hidden) for [n, hidden] states: the LM head on these rows only, in chunks."""
    head = causal_lm(model).get_output_embeddings()
    parts = []
    for start in range(0, hidden.shape[0], CHUNK):
        logits = head(hidden[start:start + CHUNK]).float()
        parts.append(torch.log_softmax(logits, -1).gather(-1, targets[start:start + CHUNK, None]).squeeze(-1))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def pair_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive [batch, 1, T, T] mask for packed pairs: causal, and a reply never sees the other reply."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = causal & (key >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)  # padding sees itself: no empty softmax row
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def pair_token_logps(model, input_ids, position_ids, segments) -> torch.Tensor:
    """Per-token log-probs [batch, T] of packed pairs (engine.data.packed_pairs); 0 outside the replies.

    A reply's first token is scored by the prompt's last hidden state, the others by the
    reply's own previous token: the same numbers as scoring prompt+chosen and
    prompt+rejected as two sequences, with the prompt run once.
    """
    dtype = next(model.parameters()).dtype
    hidden = hidden_states(model, input_ids, pair_attention_mask(segments, dtype), position_ids)
    T = segments.shape[1]
    previous = torch.arange(-1, T - 1, device=segments.device).expand_as(segments)
    starts = (segments > 0) & (segments != torch.nn.functional.pad(segments, (1, 0), value=-1)[:, :-1])
    prompt_end = ((segments == 0).sum(-1, keepdim=True) - 1).expand_as(segments)
    source = torch.where(starts, prompt_end, previous)
    rows, cols = ((segments > 0) & (source >= 0)).nonzero(as_tuple=True)
    values = project(model, hidden[rows, source[rows, cols]], input_ids[rows, cols])
    out = torch.zeros(input_ids.shape, dtype=values.dtype, device=values.device)
    out[rows, cols] = values
    return out


def sequence_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Sum of the log-probs of the completion tokens, one value per sequence."""
    return token_logps(model, input_ids, attention_mask, completion_mask).sum(-1)
