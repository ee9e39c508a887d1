"""engine.losses.dpo_loss against TRL's own DPOTrainer loss code, on random inputs.

TRL 1.16 computes the DPO loss inline in `DPOTrainer._compute_loss`. The oracle runs that
very method on a trainer built with `__new__` (no dataset, no model loading) whose model
is a stub returning given per-token log-probs in TRL's fused-LM-head output. Each pair is
sent as a batch of one, so TRL's batch mean is the per-example loss.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from engine.losses import LENGTH_AVERAGED, dpo_loss
from engine.protocol import DPO_LOSS_TYPES

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
from trl.trainer.utils import FusedCausalLMOutput  # noqa: E402

PAIRS = 8
WIDTH = 12  # tokens per sequence: 1 prompt token then up to 11 completion tokens


class GivenLogps(torch.nn.Module):
    """Stands in for a model patched by TRL's add_fused_lm_head: returns fixed log-probs."""

    def __init__(self, per_token: torch.Tensor):
        super().__init__()
        self.per_token = per_token

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache):
        assert fused_lm_head
        zeros = torch.zeros_like(self.per_token)
        return FusedCausalLMOutput(log_probs=self.per_token, entropy=zeros, mean_logits=zeros,
                                   is_top1=zeros.bool())


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def trl_loss(accelerator, loss_type, beta, label_smoothing, per_token, completion_mask, ref_chosen, ref_rejected,
             discopop_tau=0.05):
    """(loss, metrics) from TRL's DPOTrainer._compute_loss on one batch [chosen..., rejected...]."""
    model = GivenLogps(per_token)
    trainer = trl_dpo.DPOTrainer.__new__(trl_dpo.DPOTrainer)
    trainer.args = SimpleNamespace(discopop_tau=discopop_tau)
    trainer.model = model
    trainer.accelerator = accelerator
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.precompute_ref_logps = True  # reference log-probs come in the batch, as ours can
    trainer.f_divergence_type = "reverse_kl"
    trainer.ld_alpha = None
    trainer.use_weighting = False
    trainer.aux_loss_enabled = False
    trainer._tp_size = 1
    trainer._total_train_tokens = 0
    trainer._metrics = {"train": defaultdict(list)}
    inputs = {
        "input_ids": torch.zeros(completion_mask.shape, dtype=torch.long),
        "attention_mask": torch.ones(completion_mask.shape, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def random_batch(seed: int):
    """Per-token policy log-probs and completion masks for PAIRS chosen + PAIRS rejected rows."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, WIDTH, (2 * PAIRS,), generator=gen)
    completion_mask = (torch.arange(WIDTH)[None, :] >= 1) & (torch.arange(WIDTH)[None, :] <= lengths[:, None])
    completion_mask = completion_mask.long()
    per_token = -torch.rand(2 * PAIRS, WIDTH - 1, generator=gen, dtype=torch.float64) * 3
    per_token = per_token * completion_mask[:, 1:]  # TRL's head gives 0 where the label is masked
    ref = per_token.sum(1) + torch.randn(2 * PAIRS, generator=gen, dtype=torch.float64) * 4
    return per_token, completion_mask, ref[:PAIRS], ref[PAIRS:]


SORTED = ("aot", "aot_unpaired")  # sort across the batch: only the batch mean compares
CASES = [(loss_type, beta, 0.0, loss_type) for loss_type in DPO_LOSS_TYPES if loss_type != "exo_pair"
         for beta in (0.1, 0.5)] + [
    # TRL 1.16's "sigmoid" ignores label_smoothing; its "aot" loss is the cDPO formula applied to
    # batch-sorted log-ratios, which for a batch of one pair is exactly conservative DPO.
    ("sigmoid", 0.1, 0.2, "aot"),
    ("exo_pair", 0.1, 1e-3, "exo_pair"),
    ("exo_pair", 0.5, 0.2, "exo_pair"),
    ("robust", 0.3, 0.1, "robust"),
    ("robust", 0.1, 0.4, "robust"),
    ("aot", 0.1, 0.2, "aot"),
    ("aot_unpaired", 0.3, 0.1, "aot_unpaired"),
    ("discopop", 0.1, 0.2, "discopop"),  # label_smoothing ignored where TRL ignores it
    ("hinge", 0.1, 0.2, "hinge"),
]


@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_discopop_tau_matches_trl(accelerator, tau):
    per_token, completion_mask, ref_chosen, ref_rejected = random_batch(4)
    sums = per_token.sum(1)
    losses, _, _ = dpo_loss(sums[:PAIRS], sums[PAIRS:], ref_chosen, ref_rejected, beta=0.3, loss_type="discopop",
                            discopop_tau=tau)
    loss, _ = trl_loss(accelerator, "discopop", 0.3, 0.0, per_token, completion_mask, ref_chosen, ref_rejected,
                       discopop_tau=tau)
    assert losses.mean().item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("loss_type,beta,label_smoothing,trl_type", CASES)
def test_dpo_loss_matches_trl(accelerator, seed, loss_type, beta, label_smoothing, trl_type):
    per_token, completion_mask, ref_chosen, ref_rejected = random_batch(seed)
    sums = per_token.sum(1)
    lengths = completion_mask.sum(1).double()
    if loss_type in LENGTH_AVERAGED:  # ours takes per-token averages there, as engine's DPOTrainer passes them
        ours_in = (sums[:PAIRS] / lengths[:PAIRS], sums[PAIRS:] / lengths[PAIRS:],
                   ref_chosen / lengths[:PAIRS], ref_rejected / lengths[PAIRS:])
    else:
        ours_in = (sums[:PAIRS], sums[PAIRS:], ref_chosen, ref_rejected)
    losses, chosen_rewards, rejected_rewards = dpo_loss(*ours_in, beta=beta, loss_type=loss_type,
                                                        label_smoothing=label_smoothing)
    assert losses.shape == (PAIRS,)
    for i in range(PAIRS if loss_type not in SORTED else 0):
        rows = [i, PAIRS + i]
        loss, metrics = trl_loss(accelerator, trl_type, beta, label_smoothing, per_token[rows],
                                 completion_mask[rows], ref_chosen[i:i + 1], ref_rejected[i:i + 1])
        assert losses[i].item() == pytest.approx(loss.item(), abs=1e-6), f"pair {i}"
        if loss_type not in LENGTH_AVERAGED:  # TRL's reward metrics are on sums; ours on what was passed in
            assert chosen_rewards[i].item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
            assert rejected_rewards[i].item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
    if trl_type == loss_type:  # the batch mean, in one call
        loss, _ = trl_loss(accelerator, trl_type, beta, label_smoothing, per_token, completion_mask,
                           ref_chosen, ref_rejected)
        assert losses.mean().item() == pytest.approx(loss.item(), abs=1e-6)


def test_sorted_losses_differ_from_their_unsorted_form():
    """aot and aot_unpaired really sort across the batch (a batch of one would not tell)."""
    per_token, completion_mask, ref_chosen, ref_rejected = random_batch(2)
    sums = per_token.sum(1)
    args = (sums[:PAIRS], sums[PAIRS:], ref_chosen, ref_rejected)
    plain = dpo_loss(*args, loss_type="sigmoid")[0].mean()
    for loss_type in SORTED:
        assert abs(dpo_loss(*args, loss_type=loss_type)[0].mean() - plain) > 1e-3


def test_aot_oracle_is_plain_dpo_without_smoothing(accelerator):
    """The cDPO oracle above is sound: TRL's aot on one pair equals its sigmoid at label_smoothing 0."""
    per_token, completion_mask, ref_chosen, ref_rejected = random_batch(3)
    for i in range(PAIRS):
        rows = [i, PAIRS + i]
        args = (per_token[rows], completion_mask[rows], ref_chosen[i:i + 1], ref_rejected[i:i + 1])
        aot, _ = trl_loss(accelerator, "aot", 0.1, 0.0, *args)
        sigmoid, _ = trl_loss(accelerator, "sigmoid", 0.1, 0.0, *args)
        assert aot.item() == pytest.approx(sigmoid.item(), abs=1e-12)


def test_rewards_are_detached_and_loss_has_gradient():
    policy = torch.randn(4, 2, requires_grad=True)
    ref = torch.randn(4, 2)
    for loss_type in DPO_LOSS_TYPES:
        losses, chosen, rejected = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], loss_type=loss_type,
                                            label_smoothing=0.1)
        assert not chosen.requires_grad and not rejected.requires_grad
        losses.sum().backward()
        assert policy.grad is not None and torch.isfinite(policy.grad).all()
        policy.grad = None


def test_unknown_loss_type_names_the_choices():
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo, exo_pair, .*, sigmoid_norm"):
        dpo_loss(*torch.zeros(4, 1), loss_type="nope")
