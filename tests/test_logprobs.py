"""sequence_logps and sft_loss against the naive full-logits computation and transformers' CE."""

from __future__ import annotations

import pytest
import torch

from engine.data import collate
from engine.logprobs import sequence_logps, token_logps
from engine.losses import sft_loss


@pytest.fixture
def policy(tiny_policy):
    model, tokenizer = tiny_policy
    with torch.no_grad():  # a non-zero adapter, so the LoRA path is part of what is compared
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model, tokenizer


def sequences(seed=0, pad_id=0):
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for prompt_len, completion_len in [(5, 7), (1, 3), (9, 1), (3, 12)]:
        ids = torch.randint(1, 1000, (prompt_len + completion_len,), generator=gen).tolist()
        pairs.append((ids[:prompt_len], ids[prompt_len:]))
    return collate(pairs, pad_id)


def naive_logps(model, input_ids, attention_mask, completion_mask, position_ids=None):
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logps * completion_mask[:, 1:]).sum(-1)


def test_sequence_logps_equals_full_logits(policy):
    model, _ = policy
    batch = sequences()
    ours = sequence_logps(model, **batch)
    assert ours.shape == (4,)
    assert torch.allclose(ours, naive_logps(model, **batch), atol=1e-4)


def test_sequence_logps_is_the_same_under_left_padding(policy):
    """Positions count real tokens only: left-padded rows score like right-padded ones."""
    model, _ = policy
    right = sequences(seed=1)
    lengths = right["attention_mask"].sum(-1)
    left = {k: torch.stack([row.roll(int(row.shape[0] - n)) for row, n in zip(v, lengths)])
            for k, v in right.items()}
    assert not torch.equal(left["input_ids"], right["input_ids"])
    assert torch.allclose(sequence_logps(model, **left), sequence_logps(model, **right), atol=1e-4)
    positions = (left["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    assert torch.allclose(sequence_logps(model, **left), naive_logps(model, **left, position_ids=positions), atol=1e-4)


def test_gradient_matches_full_logits(policy):
    model, _ = policy
    batch = sequences(seed=2)
    lora = [p for n, p in model.named_parameters() if "lora_A" in n][0]
    sequence_logps(model, **batch).sum().backward()
    ours = lora.grad.clone()
    lora.grad = None
    naive_logps(model, **batch).sum().backward()
    assert torch.allclose(ours, lora.grad, atol=1e-5)


def test_token_logps_are_zero_outside_the_completion(policy):
    model, _ = policy
    batch = sequences(seed=3)
    per_token = token_logps(model, **batch)
    assert (per_token[batch["completion_mask"] == 0] == 0).all()
    assert (per_token[batch["completion_mask"] == 1] < 0).all()


def test_sft_loss_equals_transformers_masked_cross_entropy(policy):
    model, _ = policy
    batch = sequences(seed=4)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert sft_loss(model, **batch).item() == pytest.approx(reference.item(), abs=1e-5)


def test_sequence_logps_matches_trl_fused_head(tiny_model_dir):
    """TRL's own completion-only LM head (what its DPOTrainer uses) gives the same numbers."""
    trl_utils = pytest.importorskip("trl.trainer.utils")
    from engine.models import load_model

    model, _ = load_model(str(tiny_model_dir), device="cpu")
    batch = sequences(seed=5)
    ours = sequence_logps(model, **batch)
    trl_utils.add_fused_lm_head(model)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                   fused_lm_head=True).log_probs.sum(-1)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_packed_groups_score_each_reply_as_if_alone(policy):
    """A prompt runs once for all its replies, each reply once however many pairs hold it, and no reply
    sees another: the same log-probs and gradients as scoring every pair's replies as sequences."""
    from engine.data import packed_groups, preference_batch
    from engine.logprobs import pair_token_logps
    from engine.trainers.dpo import _per_pair

    model, tokenizer = policy
    greet = [{"role": "user", "content": "Greet me."}]
    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [
        {"prompt": "Say yes.", "chosen": " yes", "rejected": " no, never, not at all"},
        # a pick of the best of 4: three pairs, one prompt, one chosen reply
        *({"prompt": greet, "chosen": reply("Hello there, friend!"), "rejected": reply(r)}
          for r in ("No.", "Hi.", "Go away, I am busy right now.")),
        {"prompt": "", "chosen": "empty prompt", "rejected": "still scored"},
        {"prompt": greet, "chosen": reply("Hi."), "rejected": reply("No.")},  # later, two replies it already has
    ]
    separate = preference_batch(tokenizer, rows, max_length=64)
    (packed, index) = packed_groups(tokenizer, rows, max_length=64)
    assert packed["input_ids"].shape[0] == 3  # the two plain-text pairs, and one row for the chat prompt
    assert (packed["segments"] >= 0).sum() < 0.7 * separate["attention_mask"].sum()
    expected = token_logps(model, **separate).sum(-1)
    got = torch.cat(_per_pair(pair_token_logps(model, **packed), packed["segments"], index))
    assert torch.allclose(got, expected, atol=1e-4)

    lora = [p for n, p in model.named_parameters() if "lora_A" in n][3]
    got.sum().backward()
    ours = lora.grad.clone()
    lora.grad = None
    expected.sum().backward()
    assert torch.allclose(ours, lora.grad, atol=1e-5)
