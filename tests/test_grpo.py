"""GRPO: advantages by hand, the loss against TRL 1.16's GRPOTrainer, the trainer's steps.

How the TRL comparison is made: two copies of the tiny model get the same LoRA adapter,
its B matrices set to the same random values (so the policy differs from the reference
and the KL term counts). Ours computes `GRPOTrainer.loss` on two groups of three scored
completions. TRL's real GRPOTrainer (built on the other copy, nothing generated) gets the
same token ids as the "prepared inputs" its `_generate_and_score_completions` would make:
prompt ids and mask, completion ids and mask, the advantages computed with TRL's own
formula (its `nanstd`), the reference's per-token log-probs from its own forward with the
adapter disabled, and `num_items_in_batch`; its `compute_loss` then runs the loss of
TRL's default `loss_type` (dapo). Both prompts have the same length, so TRL's left padding
of prompts adds none and the two models see identical sequences.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.losses import group_advantages, grpo_loss
from engine.protocol import GRPOConfig

ROWS = [
    {"prompt": [{"role": "user", "content": "Say hello."}],
     "completions": ["Hello!", "Hi there, friend.", "Go away."], "scores": [5, 3, 1]},
    {"prompt": [{"role": "user", "content": "Say hi!!"}],
     "completions": ["Hey.", "No.", "Hey hey hey."], "scores": [4, 2, 2]},
]


def test_group_advantages_by_hand():
    scores = torch.tensor([[5.0, 3.0, 1.0], [4.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    # group 1: mean 3, std (Bessel) sqrt((4 + 0 + 4) / 2) = 2; group 2: mean 8/3, std sqrt(4/3)
    std2 = math.sqrt(((4 - 8 / 3) ** 2 + 2 * (2 - 8 / 3) ** 2) / 2)
    expected = torch.tensor([[2 / (2 + 1e-4), 0.0, -2 / (2 + 1e-4)],
                             [(4 - 8 / 3) / (std2 + 1e-4), (2 - 8 / 3) / (std2 + 1e-4), (2 - 8 / 3) / (std2 + 1e-4)],
                             [0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(scores), expected)
    torch.testing.assert_close(group_advantages(scores, scale=False),
                               torch.tensor([[2.0, 0.0, -2.0], [4 / 3, -2 / 3, -2 / 3], [0.0, 0.0, 0.0]]))


def test_grpo_loss_by_hand_clips_and_aggregates():
    """Two completions of 2 and 1 tokens; the first's second token has ratio e^0.5 > 1.2 and A > 0: clipped."""
    logps = torch.tensor([[-1.0, -0.5], [-2.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])
    ref = torch.tensor([[-1.5, -0.5], [-1.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    beta = 0.1
    k3 = lambda p, q: math.exp(q - p) - (q - p) - 1  # noqa: E731
    # the KL term is multiplied by the ratio (TRL's use_bias_correction_kl); k3(-0.5, -0.5) is 0 anyway
    per_token = [[-1.0 + beta * k3(-1.0, -1.5), -1.2 + beta * k3(-0.5, -0.5) * math.exp(0.5)],
                 [1.0 + beta * k3(-2.0, -1.0)]]
    loss, metrics = grpo_loss(logps, old, ref, advantages, mask, beta=beta)
    assert loss.item() == pytest.approx(sum(map(sum, per_token)) / 3, abs=1e-6)  # dapo: over all 3 tokens
    loss, _ = grpo_loss(logps, old, ref, advantages, mask, beta=beta, loss_type="grpo")
    assert loss.item() == pytest.approx((sum(per_token[0]) / 2 + per_token[1][0]) / 2, abs=1e-6)
    assert metrics["clip_ratio"].item() == pytest.approx(1 / 3)
    loss, _ = grpo_loss(logps, old, ref, advantages, mask, beta=beta, num_tokens=torch.tensor(6.0))
    assert loss.item() == pytest.approx(sum(map(sum, per_token)) / 6, abs=1e-6)


def _policy(model_dir):
    from engine.models import LoRAConfig, add_lora, load_model

    torch.manual_seed(0)
    base, tokenizer = load_model(str(model_dir), device="cpu")
    policy = add_lora(base, LoRAConfig(r=8, alpha=16))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: the policy is not the reference
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return policy, tokenizer


def _grad_norm(params) -> float:
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()


def test_loss_matches_trl_grpo_trainer(tiny_model_dir, tmp_path):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl.trainer.utils import nanstd

    from engine.trainers.grpo import GRPOTrainer

    beta = 0.04
    ours, tokenizer = _policy(tiny_model_dir)
    trainer = GRPOTrainer(ours, tokenizer, GRPOConfig(beta=beta))
    ours.train()
    loss, metrics = trainer.loss(ROWS)
    loss.backward()
    assert metrics["kl"] > 0 and metrics["tokens"] > 0

    groups = trainer.encode(ROWS)
    assert len({len(prompt) for prompt, _, _ in groups}) == 1, "the prompts must have one length (no left padding)"
    n = len(groups[0][1])
    prompt_ids = torch.tensor([prompt for prompt, completions, _ in groups for _ in completions])
    completions = [c for _, cs, _ in groups for c in cs]
    width = max(map(len, completions))
    completion_ids = torch.full((len(completions), width), tokenizer.pad_token_id)
    completion_mask = torch.zeros((len(completions), width), dtype=torch.long)
    for i, ids in enumerate(completions):
        completion_ids[i, :len(ids)] = torch.tensor(ids)
        completion_mask[i, :len(ids)] = 1
    rewards = torch.tensor([s for _, _, scores in groups for s in scores], dtype=torch.float32)
    # TRL's advantages, as in its _generate_and_score_completions (scale_rewards="group")
    mean = rewards.view(-1, n).mean(1).repeat_interleave(n)
    std = nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n)
    advantages = (rewards - mean) / (std + 1e-4)
    torch.testing.assert_close(advantages, trainer._prepared[1]["advantages"])

    theirs, _ = _policy(tiny_model_dir)
    args = TRLConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=n, num_generations=n, beta=beta,
                     temperature=1.0, report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False)
    assert args.loss_type == "dapo" and args.epsilon == 0.2
    oracle = trl_grpo.GRPOTrainer(model=theirs, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                                  args=args, train_dataset=Dataset.from_list([{"prompt": "x"}] * n),
                                  processing_class=tokenizer)
    oracle.current_gradient_accumulation_steps = 1
    theirs.train()
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attention_mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    with torch.no_grad(), theirs.disable_adapter():
        ref, _, _ = oracle._get_per_token_logps_and_entropies(theirs, input_ids, attention_mask, width)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "ref_per_token_logps": ref,
              "num_items_in_batch": completion_mask.sum()}
    expected = oracle.compute_loss(theirs, inputs)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert _grad_norm(trainer.params) == pytest.approx(_grad_norm(theirs.parameters()), abs=1e-5)

    # A clipped step (an old policy that differs): the pure loss against TRL's on the same per-token inputs.
    logps, _, _ = oracle._get_per_token_logps_and_entropies(theirs, input_ids, attention_mask, width)
    old = logps.detach() + 0.3 * torch.randn(logps.shape, generator=torch.Generator().manual_seed(2))
    expected = oracle.compute_loss(theirs, {**inputs, "old_per_token_logps": old})
    mine, stats = grpo_loss(logps, old, ref, advantages, completion_mask, beta=beta)
    assert stats["clip_ratio"] > 0
    assert mine.item() == pytest.approx(expected.item(), abs=1e-5)


def test_steps_on_the_same_rows_keep_the_old_policy_and_reference(tiny_policy):
    from engine.trainers.grpo import GRPOTrainer

    policy, tokenizer = tiny_policy
    trainer = GRPOTrainer(policy, tokenizer, GRPOConfig(lr=5e-2, beta=0.04))
    first = trainer.step(ROWS)
    prepared = trainer._prepared[1]
    old, ref = prepared["old_logps"].clone(), prepared["ref_logps"].clone()
    second = trainer.step(ROWS)  # the same rows object: TRL's second iteration
    assert trainer._prepared[1] is prepared and torch.equal(prepared["old_logps"], old)
    assert first["clip_ratio"] == 0.0 and first["kl"] == pytest.approx(0.0, abs=1e-12)  # fresh adapter: policy = reference
    assert second["kl"] > 0 and second["loss"] != first["loss"]
    trainer.step([dict(row) for row in ROWS])  # new rows: prepared afresh
    assert trainer._prepared[1] is not prepared and torch.equal(trainer._prepared[1]["ref_logps"], ref)
