"""The step-wise trainers: they learn, cache the reference, and save what reloads (TRL: test_dpo_family.py)."""

from __future__ import annotations

import pytest
import torch

from engine.protocol import NonFiniteLoss
from engine.trainers import DPOTrainer, SFTTrainer, TrainConfig
from engine.trainers.base import Step
from tests.policies import counted_forwards, tiny_lora

PAIRS = [
    {"prompt": "Say yes.", "chosen": " yes", "rejected": " no, never, not at all"},
    {"prompt": "Greet me.", "chosen": " hello", "rejected": " go away please"},
    {"prompt": "Pick a colour.", "chosen": " blue", "rejected": " I will not pick anything"},
    {"prompt": [{"role": "user", "content": "Count to three."}],
     "chosen": [{"role": "assistant", "content": "1 2 3"}],
     "rejected": [{"role": "assistant", "content": "I cannot count."}]},
]
def _chat(text: str, role: str = "assistant") -> list[dict]:
    return [{"role": role, "content": text}]


# A live window: two picks of the best of 4 (3 pairs each: one prompt, one chosen reply) and an edit
# preferred over the round's 4 replies (4 pairs), interleaved as rounds are.
PICKS = [
    *({"prompt": _chat("Name a fruit.", "user"), "chosen": _chat("An apple."), "rejected": _chat(r)}
      for r in ("Pear, maybe, or a fig.", "No.", "I like fruit a great deal, honestly.")),
    *({"prompt": _chat("Greet me.", "user"), "chosen": _chat("Hello there, how are you?"), "rejected": _chat(r)}
      for r in ("Hello.", "Hi there", "Go away, I am busy.", "Hello there")),
    {"prompt": "Say yes.", "chosen": " yes", "rejected": " no, never, not at all"},
    *({"prompt": _chat("Count to three.", "user"), "chosen": _chat("1 2 3"), "rejected": _chat(r)}
      for r in ("1 2", "I cannot count.", "one, two")),
]
DEMOS = [
    {"prompt": "The capital of France is", "completion": " Paris."},
    {"prompt": "Two plus two is", "completion": " four."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]},
]


def logits_of(model, tokenizer, text="Hello, how are you?"):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_dpo_raises_reward_accuracy_and_margin(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=5e-3, beta=0.1))
    first = trainer.step(PAIRS)
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)  # LoRA B starts at 0: policy == reference
    assert first["rewards/accuracies"] == 0.0 and first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for _ in range(12):
        last = trainer.step(PAIRS)
    with torch.no_grad():
        _, metrics = trainer.loss(PAIRS)
    assert metrics["rewards/accuracies"] == 1.0
    assert metrics["rewards/margins"] > 0.5
    assert last["loss"] < 0.8 * first["loss"]
    assert {"rewards/chosen", "rewards/rejected", "grad_norm", "tokens", "seconds"} <= last.keys()
    assert trainer.steps == 13


def test_sft_lowers_the_loss_on_its_data(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = SFTTrainer(model, tokenizer, TrainConfig(lr=1e-2))
    with torch.no_grad():
        before, _ = trainer.loss(DEMOS)
    for _ in range(10):
        metrics = trainer.step(DEMOS)
    with torch.no_grad():
        after, _ = trainer.loss(DEMOS)
    assert after.item() < before.item() - 0.5  # a tiny random model: ~10.9 -> ~10.0 nats
    assert metrics["tokens"] > 0


def test_precomputed_reference_logps_give_the_same_step(tiny_model_dir):
    results = []
    for precompute in (False, True):
        model, tokenizer = tiny_lora(tiny_model_dir, perturb=0)
        trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=1e-2))
        examples = PAIRS
        if precompute:
            refs = trainer.reference_logps(PAIRS)
            examples = [{**ex, "ref_chosen_logps": c, "ref_rejected_logps": r} for ex, (c, r) in zip(PAIRS, refs)]
        metrics = trainer.step(examples)
        results.append((metrics, [p.detach().clone() for p in trainer.params]))
    (m0, p0), (m1, p1) = results
    for key in ("loss", "rewards/chosen", "rewards/rejected", "grad_norm"):
        assert m0[key] == pytest.approx(m1[key], abs=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(p0, p1))


@pytest.mark.parametrize("trainer_type, rows, parts", [(DPOTrainer, PAIRS + PAIRS[:3], 4), (DPOTrainer, PICKS, 3),
                                                       (SFTTrainer, DEMOS * 2 + DEMOS[:1], 4)])
def test_a_step_in_parts_is_the_one_pass_step(tiny_model_dir, trainer_type, rows, parts):
    """A live step sums its gradient over parts of `batch_size` rows (DPO: of whole prompts, whose pairs
    share a packed row): the same update as one pass."""
    results = []
    for batch_size in (len(rows), 2):  # one part; several
        model, tokenizer = tiny_lora(tiny_model_dir, perturb=0)
        trainer = trainer_type(model, tokenizer, TrainConfig(lr=1e-2, batch_size=batch_size))
        update = Step(trainer, rows)
        while not update.finished:
            update.next_part()
        grads = [g.clone() for g in update.grads]
        results.append((update.done, grads, update.apply()))
    (one, g0, whole), (several, g1, in_parts) = results
    assert (one, several) == (1, parts)
    assert whole.keys() == in_parts.keys()
    for key, value in whole.items():
        if key != "seconds":
            assert in_parts[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert whole["grad_norm"] > 0
    assert all((a - b).norm() <= 1e-5 * a.norm() for a, b in zip(g0, g1))  # summation order only


def test_a_pick_of_the_best_runs_its_prompt_and_chosen_reply_once(tiny_model_dir):
    """The pairs of one prompt share a packed row: a window of picks costs far fewer tokens than its pairs
    on rows of their own, for the same loss."""
    model, tokenizer = tiny_lora(tiny_model_dir, perturb=1)  # policy != reference: a loss that is not log 2
    trainer = DPOTrainer(model, tokenizer, TrainConfig(batch_size=len(PICKS)))
    with torch.no_grad():
        loss, grouped = trainer.loss(PICKS)
        alone = [trainer.loss([ex]) for ex in PICKS]
    assert grouped["tokens"] < 0.6 * sum(m["tokens"] for _, m in alone)
    assert loss.item() != pytest.approx(alone[0][0].item())
    assert loss.item() == pytest.approx(sum(part.item() for part, _ in alone) / len(PICKS), rel=1e-4)


def test_non_finite_loss_discards_the_update(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=1e-2))
    before = [p.detach().clone() for p in trainer.params]
    bad = [{**ex, "ref_chosen_logps": float("nan"), "ref_rejected_logps": 0.0} for ex in PAIRS]
    with pytest.raises(NonFiniteLoss):
        trainer.step(bad)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.params))
    assert all(p.grad is None for p in trainer.params)
    trainer.step(PAIRS)  # and the trainer still works afterwards


def test_fit_trains_and_writes_checkpoints(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=5e-3, batch_size=2, grad_accum=2, epochs=6, save_steps=3))
    seen = []
    metrics = trainer.fit(PAIRS, output_dir=tmp_path, progress=False, on_step=seen.append)
    assert [m["step"] for m in seen] == list(range(1, 7))  # 4 rows / (2 x 2) = 1 step per epoch
    assert metrics["step"] == 6 and metrics["loss"] < 0.693
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert (tmp_path / "checkpoint-6" / "adapter_config.json").exists()


def test_saved_adapter_reloads_to_identical_outputs(tiny_policy, tiny_model_dir, tmp_path):
    from peft import PeftModel

    from engine.models import load_model
    from engine.versions import load_adapter

    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=1e-2))
    for _ in range(3):
        trainer.step(PAIRS)
    expected = logits_of(model, tokenizer)
    folder = trainer.save(tmp_path / "v0001", {"note": "three steps"})

    fresh, _ = load_model(str(tiny_model_dir), device="cpu")
    assert not torch.allclose(logits_of(fresh, tokenizer), expected)  # the adapter changes the outputs
    reloaded = PeftModel.from_pretrained(fresh, str(folder))
    assert torch.equal(logits_of(reloaded, tokenizer), expected)

    live, _ = tiny_lora(tiny_model_dir, seed=123)  # a different fresh adapter, overwritten in place
    meta = load_adapter(live, folder)
    assert torch.equal(logits_of(live, tokenizer), expected)
    assert meta["note"] == "three steps" and meta["config"]["lr"] == 1e-2


def test_reference_logps_are_cached_per_reply(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig(lr=1e-2))
    first = trainer.reference_logps(PAIRS[:2])
    assert len(trainer.reference_cache) == 4
    trainer.step(PAIRS)  # the adapter moves; the reference (adapter disabled) must not
    assert len(trainer.reference_cache) == 2 * len(PAIRS)
    with counted_forwards(model) as calls:
        again = trainer.reference_logps(PAIRS[:2])
        assert again == first and not calls  # served from the cache, no forward
        trainer.reference_logps(PAIRS[:1] + [{**PAIRS[0], "chosen": " a new reply"}])
        assert len(calls) == 1  # only the new pair runs
    trainer.reference_cache.clear()
    fresh = trainer.reference_logps(PAIRS[:2])
    assert fresh == pytest.approx(first, abs=1e-5)


def test_a_chat_pair_scored_one_way_serves_the_other(tiny_policy):
    """The live loop scores a round's candidates before the pick says which one is chosen."""
    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig())
    prompt = [{"role": "user", "content": "Greet me."}]
    a, b = [{"role": "assistant", "content": "Hello!"}], [{"role": "assistant", "content": "Go away."}]
    (scored,) = trainer.reference_logps([{"prompt": prompt, "chosen": a, "rejected": b}])
    with counted_forwards(model) as calls:
        (swapped,) = trainer.reference_logps([{"prompt": prompt, "chosen": b, "rejected": a}])
    assert not calls and swapped == (scored[1], scored[0])


def test_reference_cache_follows_the_settings_that_change_the_value(tiny_policy):
    """The live loop swaps the config between updates: a truncated reply must not reuse a full one's sum.
    The loss type changes nothing there: sums are cached, averaged where a loss type needs it."""
    from dataclasses import replace

    model, tokenizer = tiny_policy
    trainer = DPOTrainer(model, tokenizer, TrainConfig())
    (summed,) = trainer.reference_logps(PAIRS[:1])
    trainer.config = replace(trainer.config, loss_type=["ipo"], loss_weights=None)
    assert trainer.reference_logps(PAIRS[:1]) == [summed] and len(trainer.reference_cache) == 2
    trainer.config = replace(trainer.config, loss_type=["sigmoid"], max_length=8)
    (truncated,) = trainer.reference_logps(PAIRS[:1])
    assert truncated != summed and len(trainer.reference_cache) == 4  # two replies x two truncations
