"""Policies on the tiny test model for the trainer tests: a LoRA adapter, fresh or perturbed, and a count of forwards."""

from __future__ import annotations

from contextlib import contextmanager


def perturb_adapter(model, seed: int = 0) -> None:
    """Random LoRA B matrices (a fresh adapter's are 0): the policy is no longer the reference."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def tiny_lora(model_dir, seed: int = 0, perturb: int | None = None, patch_base=None):
    """(policy, tokenizer): the model in `model_dir` with an r8 adapter initialised from `seed`; `perturb`
    seeds perturb_adapter; `patch_base(base)` runs before the adapter wraps the base."""
    import torch

    from engine.models import LoRAConfig, add_lora, load_model

    torch.manual_seed(seed)
    base, tokenizer = load_model(str(model_dir), device="cpu")
    if patch_base is not None:
        patch_base(base)
    model = add_lora(base, LoRAConfig(r=8, alpha=16))
    if perturb is not None:
        perturb_adapter(model, perturb)
    return model, tokenizer


@contextmanager
def counted_forwards(model):
    """The list of the model's forward passes in the block, one entry each (a hook on its input embeddings)."""
    calls = []
    handle = model.get_input_embeddings().register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()
