"""engine/lora_decode.py: decoding steps skip PEFT's per-layer dispatch and compute the same logits."""

from __future__ import annotations

import torch

from engine.generation import Generation
from engine.lora_decode import direct, plain_layers

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def trained(model, seed=0):
    """Give the adapter non-zero B (a fresh one is the base model) so the low-rank term counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_direct_forward_is_bit_identical_to_peft(tiny_policy):
    model, tokenizer = tiny_policy
    trained(model)
    layers = plain_layers(model)
    assert len(layers) == 2 * 7  # every linear layer of both decoder layers (LoRA on all linear layers)
    ids = torch.tensor([tokenizer.encode("Version control for weights.")])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        with direct(layers):
            got = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(got, expected) and torch.equal(after, expected)
    assert all("forward" not in module.__dict__ for module, _ in layers)  # PEFT's forward is back


def test_decoding_steps_bypass_peft_and_give_the_same_tokens(tiny_policy, monkeypatch):
    from peft.tuners.lora import Linear

    model, tokenizer = tiny_policy
    trained(model, seed=1)

    def tokens(through_peft: bool) -> list[list[int]]:
        gen = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=8, seed=4)
        if through_peft:
            gen.lora_layers = []  # PEFT's own forward every step
        for _ in gen:
            pass
        return [c.tokens for c in gen.candidates]

    expected = tokens(through_peft=True)
    calls = []
    peft_forward = Linear.forward
    monkeypatch.setattr(Linear, "forward", lambda self, *a, **k: calls.append(1) or peft_forward(self, *a, **k))
    assert tokens(through_peft=False) == expected
    assert not calls, "a decoding step went through PEFT's forward"
    with torch.no_grad():  # outside a step the model is PEFT's again (training, reference log-probs)
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls


def test_only_layers_in_the_plain_case_are_taken(tiny_model_dir):
    from engine.models import LoRAConfig, add_lora, load_model

    base, _ = load_model(str(tiny_model_dir), device="cpu")
    model = add_lora(base, LoRAConfig(r=8, alpha=16, dropout=0.1))
    model.train()  # dropout is on: PEFT's forward draws it
    assert plain_layers(model) == []
    model.eval()
    assert len(plain_layers(model)) == 2 * 7
    with model.disable_adapter():  # the reference model
        assert plain_layers(model) == []
