"""PEFT's LoRA linear layers without PEFT's per-call dispatch, for the steps of a decode.

A decoding step calls every LoRA-wrapped linear layer once (210 of them at 135M). PEFT's
forward spends more time in Python than the low-rank product costs: adapter lookups, state
checks and four module calls per layer. Inside `direct(layers)` each layer computes the same
operations PEFT's forward does in its plain case, from the same parameter tensors, so the
logits are bit-identical and an adapter copied into those tensors (a rollback, a version lent
for an arena round) is the one used. Only layers in that plain case are taken: one active
adapter, not merged, not disabled, no variant (DoRA), no dropout (p = 0, or eval mode).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def plain_layers(model) -> list:
    """(layer, its direct forward) for every LoRA linear layer of `model` in PEFT's plain case."""
    from peft.tuners.lora import Linear

    out = []
    for module in model.modules():
        if type(module) is not Linear or type(module.base_layer) is not torch.nn.Linear:
            continue
        names = module.active_adapters
        if (module.merged or module.disable_adapters or len(names) != 1 or names[0] in module.lora_variant
                or names[0] not in module.lora_A or not module.cast_input_dtype_enabled):
            continue
        if module.training and type(module.lora_dropout[names[0]]) is not torch.nn.Identity:  # dropout is on
            continue
        out.append((module, _direct(module, module.lora_A[names[0]], module.lora_B[names[0]], module.scaling[names[0]])))
    return out


def _direct(module, lora_a: torch.nn.Linear, lora_b: torch.nn.Linear, scaling: float):
    weight, bias = module.base_layer.weight, module.base_layer.bias
    a, b, b_bias = lora_a.weight, lora_b.weight, lora_b.bias

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs:  # a call PEFT would pass on to the base layer: let PEFT make it
            return type(module).forward(module, x, *args, **kwargs)
        result = F.linear(x, weight, bias)  # what PEFT's forward computes, in the same order and dtypes
        return (result + F.linear(F.linear(x.to(a.dtype), a), b, b_bias) * scaling).to(result.dtype)

    return forward


@contextlib.contextmanager
def direct(layers: list):
    """Run `layers` (from plain_layers) with their direct forward, then give them PEFT's back."""
    for module, forward in layers:
        module.__dict__["forward"] = forward  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        for module, _ in layers:
            module.__dict__.pop("forward", None)
