"""--gradient-checkpointing: the same losses and gradients as without, the layers really recomputed."""

from __future__ import annotations

import threading

import torch

from engine.models import LoRAConfig, add_lora, enable_gradient_checkpointing, gradient_checkpointing, load_model
from engine.trainers import DPOTrainer, TrainConfig

PAIRS = [{"prompt": "Say yes.", "chosen": " yes", "rejected": " no, never, not at all"},
         {"prompt": [{"role": "user", "content": "Count to three."}],
          "chosen": [{"role": "assistant", "content": "1 2 3"}],
          "rejected": [{"role": "assistant", "content": "I cannot count."}]}]


def fresh_policy(model_dir):
    torch.manual_seed(0)
    base, tokenizer = load_model(str(model_dir), device="cpu")
    policy = add_lora(base, LoRAConfig(r=4, alpha=8))
    with torch.no_grad():  # B is zero at initialisation: make the adapter matter to the gradients
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return policy, tokenizer


def layer_forwards(policy) -> list[int]:
    """A counter of the first decoder layer's forward runs (its MLP's: the layer's own hooks stay
    outside the checkpoint, so they do not see the recompute)."""
    calls = [0]
    layer = policy.get_base_model().model.layers[0].mlp
    layer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def loss_and_grads(policy, tokenizer):
    trainer = DPOTrainer(policy, tokenizer, TrainConfig())
    policy.train()
    loss, _ = trainer.loss(PAIRS)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad(set_to_none=True)
    policy.eval()
    return loss.detach(), grads


def test_same_loss_and_gradients_with_the_layers_recomputed(tiny_model_dir):
    plain, tokenizer = fresh_policy(tiny_model_dir)
    plain_calls = layer_forwards(plain)
    loss, grads = loss_and_grads(plain, tokenizer)

    ckpt, _ = fresh_policy(tiny_model_dir)
    enable_gradient_checkpointing(ckpt)
    assert gradient_checkpointing(ckpt) and not gradient_checkpointing(plain)
    ckpt_calls = layer_forwards(ckpt)
    ckpt_loss, ckpt_grads = loss_and_grads(ckpt, tokenizer)

    # the policy pass runs again in the backward (the reference pass, without gradients, does not)
    assert ckpt_calls[0] == plain_calls[0] + 1, "the backward did not recompute the layer"
    torch.testing.assert_close(ckpt_loss, loss)
    assert grads.keys() == ckpt_grads.keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        torch.testing.assert_close(ckpt_grads[name], grads[name], atol=1e-6, rtol=1e-5)


def test_ppo_step_is_the_same_with_checkpointing(tiny_model_dir):
    from engine.trainers.ppo import PPOConfig, PPOTrainer
    from engine.versions import adapter_state

    def stepped(checkpointing: bool):
        policy, tokenizer = fresh_policy(tiny_model_dir)
        if checkpointing:
            enable_gradient_checkpointing(policy)
        calls = layer_forwards(policy)
        torch.manual_seed(1)
        trainer = PPOTrainer(policy, tokenizer, PPOConfig(lr=1e-2, ppo_epochs=1, mini_batch_size=2))
        metrics = trainer.step([[1, 2, 3], [4, 5]], [[6, 7, 8], [9]], [1.0, -1.0])
        assert not policy.training  # back in eval mode: decoding is unchanged
        return adapter_state(policy), metrics, calls[0]

    plain, plain_metrics, plain_calls = stepped(False)
    ckpt, ckpt_metrics, ckpt_calls = stepped(True)
    assert ckpt_calls > plain_calls, "the PPO update did not recompute the layer"
    assert ckpt_metrics["policy_loss"] == plain_metrics["policy_loss"]
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


def test_the_live_engine_updates_with_checkpointing(tiny_model_dir, tmp_path):
    from types import SimpleNamespace

    from engine.live import EngineOptions, LiveEngine

    engine = LiveEngine(EngineOptions(model=str(tiny_model_dir), device="cpu", session_dir=str(tmp_path),
                                      gradient_checkpointing=True))
    assert gradient_checkpointing(engine.policy)
    calls = layer_forwards(engine.policy)
    config, steps = engine.check_hyperparameters("dpo", {})
    events = []
    job = SimpleNamespace(cancelled=threading.Event())
    for _ in engine.update_job(job, "dpo", engine.check_examples("dpo", PAIRS), config, steps,
                               lambda type_, **payload: events.append((type_, payload))):
        pass
    assert events[-1][0] == "done" and events[-1][1]["version"] == 1
    assert calls[0] >= 3  # reference + forward + the backward's recompute
