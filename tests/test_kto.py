"""KTO: the loss by hand, the trainer against TRL 1.16's KTOTrainer, and that it learns."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from engine.data import kto_rows
from engine.losses import kto_kl, kto_loss
from engine.trainers import KTOTrainer, TrainConfig
from tests.policies import counted_forwards, tiny_lora

ROWS = [
    {"prompt": "Say yes.", "completion": " yes", "label": True},
    {"prompt": "Greet me.", "completion": " go away please", "label": False},
    {"prompt": "Pick a colour.", "completion": " blue", "label": True},
    {"prompt": "Name a fruit.", "completion": " I will not name anything", "label": False},
]
CHAT_ROWS = [
    {"prompt": [{"role": "user", "content": "Count to three."}],
     "completion": [{"role": "assistant", "content": "1 2 3"}], "label": True},
    {"prompt": [{"role": "user", "content": "Greet me."}],
     "completion": [{"role": "assistant", "content": "Go away."}], "label": False},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "completion": [{"role": "assistant", "content": "Hello!"}], "label": True},
]


def test_kto_loss_matches_a_hand_computation():
    policy, ref = torch.tensor([-3.0, -5.0, -2.0]), torch.tensor([-4.0, -4.5, -2.0])
    desirable = torch.tensor([True, False, True])
    kl = kto_kl(torch.tensor([-6.0, -7.0, -5.0]), torch.tensor([-6.5, -7.5, -5.0]))  # mean log-ratio 1/3
    losses = kto_loss(policy, ref, desirable, kl, beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    z = 1 / 3
    expected = [2.0 * (1 - sigmoid(0.5 * (1.0 - z))), 0.5 * (1 - sigmoid(0.5 * (z - -0.5))), 2.0 * (1 - sigmoid(0.5 * -z))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)
    # The reference point is clamped at 0: a negative mean log-ratio counts as none.
    negative = kto_kl(torch.tensor([-9.0]), torch.tensor([-6.0]))
    assert negative.item() == -3.0
    assert kto_loss(policy, ref, desirable, negative).tolist() == pytest.approx(
        kto_loss(policy, ref, desirable, torch.tensor(0.0)).tolist())


def test_kto_kl_and_loss_are_detached_from_the_reference_point():
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    kl_policy = torch.tensor([-2.0, -1.0], requires_grad=True)
    kl = kto_kl(kl_policy, torch.tensor([-3.0, -3.0]))
    kto_loss(policy, torch.tensor([-4.0, -4.0]), torch.tensor([True, False]), kl).sum().backward()
    assert kl_policy.grad is None and policy.grad is not None and policy.grad.abs().sum() > 0


def test_mismatched_completions_are_the_previous_rows(tiny_policy):
    _, tokenizer = tiny_policy
    rows = kto_rows(tokenizer, ROWS, None)
    completions = [c for _, c, _ in rows]
    assert [m for _, _, m in rows] == completions[-1:] + completions[:-1]


@pytest.mark.parametrize("rows", [ROWS, CHAT_ROWS], ids=["plain", "conversational"])
def test_kto_first_step_loss_matches_trl(tiny_model_dir, rows):
    """Our loss == TRL's KTOTrainer on the same model and rows: TRL tokenizes the rows, builds its
    KL dataset and batch, and runs its own forward (fused LM head, the adapter disabled for the reference)."""
    trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
    from accelerate import Accelerator
    from datasets import Dataset
    from trl.trainer.utils import add_fused_lm_head

    # perturbed: a mean log-ratio > 0 on the mismatched pairs of both row sets, so the KL term acts
    model, tokenizer = tiny_lora(tiny_model_dir, perturb=1, patch_base=lambda base: add_fused_lm_head(
        base, outputs=("log_probs", "entropy", "mean_logits", "is_top1")))
    config = TrainConfig(beta=0.3, desirable_weight=1.5, undesirable_weight=0.7, max_length=1024)
    ours = KTOTrainer(model, tokenizer, config)
    model.eval()
    with torch.no_grad():
        our_loss, metrics = ours.loss(rows)

    theirs = trl_kto.KTOTrainer.__new__(trl_kto.KTOTrainer)
    theirs.__dict__.update(
        model=model, ref_model=None, accelerator=Accelerator(cpu=True), _tokenizer=tokenizer,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, dataset_num_proc=None, max_length=config.max_length,
                             per_device_train_batch_size=len(rows)),
        loss_type="kto", beta=config.beta, desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight, calculate_KL=True, precompute_ref_logps=False,
        aux_loss_enabled=False, _tp_size=1, _total_train_tokens=0, _metrics=defaultdict(lambda: defaultdict(list)),
    )
    dataset = theirs._prepare_dataset(Dataset.from_list(rows), tokenizer, theirs.args, "train")
    collator = trl_kto.DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id, max_length=config.max_length)
    batch = collator.torch_call(list(dataset))
    with torch.no_grad():
        trl_loss = theirs._compute_loss(model, batch, return_outputs=False)
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    trl_metrics = {k: v[-1] for k, v in theirs._metrics["eval"].items()}
    assert metrics["kl"] == pytest.approx(trl_metrics["kl"], abs=1e-5)
    assert metrics["kl"] > 0
    assert metrics["rewards/chosen"] == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-5)
    assert metrics["rewards/rejected"] == pytest.approx(trl_metrics["rewards/rejected"], abs=1e-5)


def test_kto_raises_desirable_and_lowers_undesirable_rewards(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = KTOTrainer(model, tokenizer, TrainConfig(lr=5e-3, beta=0.1))
    first = trainer.step(ROWS)
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)  # LoRA B starts at 0: policy == reference, KL 0
    for _ in range(10):
        trainer.step(ROWS)
    with torch.no_grad():
        last, metrics = trainer.loss(ROWS)
    assert metrics["rewards/chosen"] > 0 > metrics["rewards/rejected"]
    assert last.item() < first["loss"] - 0.01
    assert {"kl", "rewards/margins", "grad_norm", "tokens"} <= first.keys()


def test_reference_logps_are_cached(tiny_policy):
    model, tokenizer = tiny_policy
    trainer = KTOTrainer(model, tokenizer, TrainConfig(lr=1e-2))
    trainer.step(ROWS)
    cached = dict(trainer.reference_cache)
    with counted_forwards(model) as calls:
        trainer.step(ROWS)  # the adapter moved; the reference did not
    assert len(calls) == 1 and trainer.reference_cache == cached  # the policy's forward only
