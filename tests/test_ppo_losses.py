"""PPO and reward-model losses: hand-computed values and the clipping behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.losses import gae, kl_penalty, masked_whiten, pairwise_reward_loss, ppo_policy_loss, ppo_value_loss


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: 1 - 0.7 = 0.3; t=1: (0.7 - 0.6) + 0.5 * 0.3 = 0.25; t=0: (0.6 - 0.5) + 0.5 * 0.25 = 0.225
    torch.testing.assert_close(advantages, torch.tensor([[0.225, 0.25, 0.3]]))
    torch.testing.assert_close(returns, torch.tensor([[0.725, 0.85, 1.0]]))

    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=1: 0.9 * 0.7 - 0.6 + 0.45 * 0.3 = 0.165; t=0: 0.9 * 0.6 - 0.5 + 0.45 * 0.165 = 0.11425
    torch.testing.assert_close(advantages, torch.tensor([[0.11425, 0.165, 0.3]]))


def test_gae_ignores_masked_positions():
    # A prompt token before, a masked token in the middle and padding after: their values and
    # rewards are garbage and must not change anything.
    rewards = torch.tensor([[9.0, 0.0, 9.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[99.0, 0.5, 99.0, 0.6, 0.7, 99.0]])
    mask = torch.tensor([[0, 1, 0, 1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[0.0, 0.225, 0.0, 0.25, 0.3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.725, 0.0, 0.85, 1.0, 0.0]]))


def test_masked_whiten():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(masked_whiten(values, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-5, rtol=0)


def test_policy_loss_clips_only_in_the_direction_of_the_advantage():
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.zeros(1, 4)
    # ratio 2 (beyond 1 + eps) and 0.5 (below 1 - eps), for a positive and a negative advantage
    logprobs = torch.tensor([[math.log(2.0), math.log(0.5), math.log(2.0), math.log(0.5)]], requires_grad=True)
    mask = torch.ones(1, 4)
    loss, clipfrac = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # A > 0: ratio 2 is clipped to 1.2 (-1.2); ratio 0.5 stays (-0.5).
    # A < 0: ratio 2 stays (+2); ratio 0.5 is clipped to 0.8 (+0.8).
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 2.0 + 0.8) / 4))
    torch.testing.assert_close(clipfrac, torch.tensor(0.5))
    loss.backward()
    # Clipped tokens give no gradient; the others get -A * ratio / 4.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5 / 4, 2.0 / 4, 0.0]]))


def test_policy_loss_masked_mean_and_no_clip_at_ratio_one():
    logprobs = torch.tensor([[0.3, -1.0, 5.0]])
    advantages = torch.tensor([[2.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask)
    torch.testing.assert_close(loss, torch.tensor(-(2.0 - 1.0) / 2))
    assert clipfrac.item() == 0.0


def test_value_loss_clipping():
    old = torch.zeros(1, 3)
    returns = torch.ones(1, 3)
    mask = torch.ones(1, 3)
    # Within the clip range: plain 0.5 * squared error.
    torch.testing.assert_close(ppo_value_loss(torch.full((1, 3), 0.1), old, returns, mask), torch.tensor(0.5 * 0.81))
    # Moved past the clip range towards the return: the clipped (larger) error counts.
    values = torch.ones(1, 3, requires_grad=True)
    loss = ppo_value_loss(values, old, returns, mask, clip_range_value=0.2)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 0.64))
    loss.backward()
    assert torch.all(values.grad == 0)
    # Moved away from the return: the unclipped error is larger and counts.
    torch.testing.assert_close(ppo_value_loss(torch.full((1, 3), -1.0), old, returns, mask), torch.tensor(0.5 * 4.0))
    # Masked positions take no part.
    mixed = torch.tensor([[0.1, 50.0, 50.0]])
    torch.testing.assert_close(ppo_value_loss(mixed, old, returns, torch.tensor([[1, 0, 0]])), torch.tensor(0.5 * 0.81))


def test_kl_penalty_k1_k3_values():
    logprobs = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([math.log(2.0)]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([0.5 - 1 + math.log(2.0)]))
    with pytest.raises(ValueError):
        kl_penalty(logprobs, ref, "k2x")


def test_kl_penalty_estimators_are_unbiased():
    torch.manual_seed(0)
    p = torch.log_softmax(torch.randn(50), -1)
    q = torch.log_softmax(torch.randn(50), -1)
    exact = (p.exp() * (p - q)).sum()
    for kind in ("k1", "k3"):
        expectation = (p.exp() * kl_penalty(p, q, kind)).sum()  # E over tokens sampled from p
        torch.testing.assert_close(expectation, exact)
    assert torch.all(kl_penalty(p, q, "k3") >= 0)


def test_pairwise_reward_loss():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([0.0, 1.0])
    expected = (-F.logsigmoid(torch.tensor(2.0)) - F.logsigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(pairwise_reward_loss(chosen, rejected), expected)
    with_margin = (-F.logsigmoid(torch.tensor(1.0)) - F.logsigmoid(torch.tensor(-1.5))) / 2
    torch.testing.assert_close(pairwise_reward_loss(chosen, rejected, torch.tensor([1.0, 0.5])), with_margin)
    assert pairwise_reward_loss(torch.tensor([5.0]), torch.tensor([-5.0])) < pairwise_reward_loss(torch.tensor([-5.0]), torch.tensor([5.0]))
