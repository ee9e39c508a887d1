"""Every DPO loss type of TRL 1.16, and weighted lists of them, against TRL's own DPOTrainer.

One tiny model, one LoRA adapter, three pairs, fp32. TRL's trainer is built for each loss
type on its own dataset (its tokenization, collator, fused LM head and reference forward) and
trains one step; ours takes one step on the same rows. The adapter is perturbed away from
zero and TRL is given the base model as `ref_model` (ours disables the adapter for the
reference), so the first step already has log-ratios that differ from 0.
"""

from __future__ import annotations

import re

import pytest
import torch

from engine.protocol import DPO_LOSS_TYPES, LIVE_TRAINING, TrainConfig, UserError, loss_terms
from engine.trainers import DPOTrainer
from tests.policies import tiny_lora

trl = pytest.importorskip("trl")

ROWS = [  # short plain-text rows: TRL's forward projects every position onto the whole vocabulary
    {"prompt": "Say yes.", "chosen": " yes", "rejected": " no, never"},
    {"prompt": "Greet me.", "chosen": " hello there", "rejected": " go away"},
    {"prompt": "Count to three.", "chosen": " 1 2 3", "rejected": " I can't."},
]
BETA = 0.2
CASES = [(loss_type, None) for loss_type in DPO_LOSS_TYPES] + [
    ("sigmoid,sft", "1,1"),  # the live default; what rpo_alpha 1.0 was
    ("sigmoid,bco_pair,sft", "0.8,0.2,1"),  # TRL's MPO example
]


# At TRL's default discopop_tau (0.05) the gradient of discopop's mixing weight is 1/tau = 20x the
# log-ratios' fp32 rounding (the two trainers sum log-probs in a different order): its gradient norms
# then agree to 3e-5, not 1e-5. The formula itself is checked at 0.05 in test_losses.py.
DISCOPOP_TAU = 0.5


def label_smoothing(loss_type: str) -> float:
    # Where TRL uses it (robust, exo_pair, aot, aot_unpaired) and where it ignores it, so ours must too;
    # not for sigmoid, which stays cDPO with it (TRL 1.16's sigmoid ignores it).
    return 0.0 if loss_type.startswith("sigmoid,") or loss_type == "sigmoid" else 0.1


def trl_first_step(tiny_model_dir, tmp_path, loss_type: str, loss_weights: str | None) -> dict:
    """Loss and gradient norm of TRL's DPOTrainer's first optimizer step."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from engine.models import load_model

    model, tokenizer = tiny_lora(tiny_model_dir, perturb=1)  # policy != reference
    reference, _ = load_model(str(tiny_model_dir), device="cpu")
    logged = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged.append(logs)

    args = trl.DPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=len(ROWS), max_steps=1, beta=BETA,
        loss_type=loss_type.split(","), loss_weights=[float(w) for w in loss_weights.split(",")] if loss_weights else None,
        label_smoothing=label_smoothing(loss_type), discopop_tau=DISCOPOP_TAU, gradient_checkpointing=False, bf16=False, use_cpu=True,
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0)
    trainer = trl.DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(ROWS),
                             processing_class=tokenizer, callbacks=[Log()])
    trainer.train()
    return logged[0]


@pytest.mark.parametrize("loss_type,loss_weights", CASES)
def test_first_step_matches_trls_dpo_trainer(tiny_model_dir, tmp_path, loss_type, loss_weights):
    theirs = trl_first_step(tiny_model_dir, tmp_path, loss_type, loss_weights)
    model, tokenizer = tiny_lora(tiny_model_dir, perturb=1)  # policy != reference
    config = TrainConfig(beta=BETA, loss_type=loss_type, loss_weights=loss_weights,
                         label_smoothing=label_smoothing(loss_type), discopop_tau=DISCOPOP_TAU)
    ours = DPOTrainer(model, tokenizer, config).step(ROWS)
    # 1e-5, or 1e-5 of the value where it is large (sppo_hard's ~50: fp32 sums in a different order)
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-5, rel=1e-5)
    assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], abs=1e-5, rel=1e-5)
    for key in ("rewards/margins", "logps/chosen", "logps/rejected"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-5, rel=1e-6), key
    assert ours["rewards/margins"] != 0  # the reference really differs from the policy


def test_the_live_default_and_the_rpo_alpha_alias():
    """The live default is DPO + 1.0 x the chosen reply's NLL past the prefix it shares with the rejected
    one; `rpo_alpha` (RPO's name) sets the weight of the list's NLL term, sft or sft_suffix."""
    live = TrainConfig.from_dict(LIVE_TRAINING.for_method("dpo"))
    assert (live.loss_type, live.loss_weights) == (["sigmoid", "sft_suffix"], [1.0, 1.0])
    assert loss_terms("sigmoid,sft_suffix", rpo_alpha=1.0) == (live.loss_type, live.loss_weights)
    assert loss_terms("sigmoid", rpo_alpha=1.0) == (["sigmoid", "sft"], [1.0, 1.0])  # TRL's RPO
    assert loss_terms("ipo,sft", "1,2", rpo_alpha=0.5) == (["ipo", "sft"], [1.0, 0.5])  # the alias sets the weight
    assert loss_terms("sigmoid,sft_suffix", rpo_alpha=0.5) == (["sigmoid", "sft_suffix"], [1.0, 0.5])
    assert loss_terms("sigmoid,sft", rpo_alpha=0) == (["sigmoid"], [1.0])  # and 0 removes the term


def test_the_sft_term_weight_scales_only_the_nll(tiny_policy):
    model, tokenizer = tiny_policy
    with torch.no_grad():
        dpo, _ = DPOTrainer(model, tokenizer, TrainConfig(loss_type="sigmoid")).loss(ROWS)
        both, metrics = DPOTrainer(model, tokenizer, TrainConfig(loss_type="sigmoid,sft", loss_weights="1,0.5")).loss(ROWS)
    assert both.item() == pytest.approx(dpo.item() + 0.5 * metrics["nll"], abs=1e-6)


@pytest.mark.parametrize("loss_type,loss_weights,label_smoothing,message", [
    ("sigmoid,dpo", None, 0.0, "--loss-type sigmoid,dpo: unknown loss type 'dpo'; choose from sigmoid, hinge"),
    ("sigmoid,sigmoid", None, 0.0, "listed twice"),
    ("sigmoid,sft", "1", 0.0, "--loss-weights has 1 weight(s) for 2 loss type(s) (sigmoid,sft)"),
    ("sigmoid", "one", 0.0, "--loss-weights 'one': finite numbers"),
    ("exo_pair", None, 0.0, "--label-smoothing 0: exo_pair needs its epsilon > 0"),
    ("robust", None, 0.5, "--label-smoothing 0.5: robust's flip rate must be below 0.5"),
])
def test_bad_loss_options_are_one_line(loss_type, loss_weights, label_smoothing, message):
    with pytest.raises(UserError) as caught:
        TrainConfig(loss_type=loss_type, loss_weights=loss_weights, label_smoothing=label_smoothing)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_updates_hyperparameters_set_the_loss_on_the_live_default():
    """The live engine's dpo config: LIVE_TRAINING, then `serve --loss-type`, then the update's hyperparameters."""
    from engine.live import EngineOptions, LiveEngine

    engine = LiveEngine.__new__(LiveEngine)  # check_hyperparameters needs no model
    engine.options = EngineOptions()

    def loss(**values):
        config, _ = engine.check_hyperparameters("dpo", values)
        return config.loss_type, config.loss_weights

    assert loss() == (["sigmoid", "sft_suffix"], [1.0, 1.0])
    assert loss(rpo_alpha=0.5) == (["sigmoid", "sft_suffix"], [1.0, 0.5])  # old sessions' override: the NLL's weight
    assert loss(rpo_alpha=0) == (["sigmoid"], [1.0])
    assert loss(loss_type=["ipo"]) == (["ipo"], [1.0])  # a new list starts from weights 1, not the default's
    assert loss(loss_type="apo_zero,sft", loss_weights=[1, 2]) == (["apo_zero", "sft"], [1.0, 2.0])
    for bad, message in [({"loss_weights": [1]}, "hyperparameters.loss_weights has 1 weight(s) for 2"),
                         ({"loss_type": 3}, "hyperparameters.loss_type 3: one loss name"),
                         ({"loss_type": "exo_pair"}, "hyperparameters.label_smoothing 0: exo_pair"),
                         ({"rpo_alpha": "1"}, "hyperparameters.rpo_alpha '1': a finite number")]:
        with pytest.raises(UserError, match=re.escape(message)):
            engine.check_hyperparameters("dpo", bad)
    engine.options = EngineOptions(loss_type="ipo,sft", loss_weights="1,0.1")
    assert loss() == (["ipo", "sft"], [1.0, 0.1])
    assert loss(loss_type="exo_pair", label_smoothing=1e-3) == (["exo_pair"], [1.0])


def test_a_live_dpo_update_has_its_own_beta_and_an_override_replaces_it():
    """dpo's live beta (LiveTraining.dpo_beta) is not kto's, and a session's beta still wins."""
    from engine.live import EngineOptions, LiveEngine

    engine = LiveEngine.__new__(LiveEngine)  # check_hyperparameters needs no model
    engine.options = EngineOptions()
    beta = lambda method, **values: engine.check_hyperparameters(method, values)[0].beta  # noqa: E731
    assert (beta("dpo"), beta("kto")) == (LIVE_TRAINING.dpo_beta, LIVE_TRAINING.beta)
    assert LIVE_TRAINING.dpo_beta != LIVE_TRAINING.beta
    assert beta("dpo", beta=0.3) == 0.3


def test_the_sft_suffix_term_is_the_nll_past_the_shared_prefix(tiny_policy):
    """An edit that adds a sentence trains that sentence: the chosen reply's tokens from where it parts from
    the rejected one, a mean per pair; a pair that shares no prefix trains the whole chosen reply."""
    from engine.data import tokenize_pair

    model, tokenizer = tiny_policy
    kept = " The sky is blue because air scatters blue light."
    pair = {"prompt": [{"role": "user", "content": "Why is the sky blue?"}],
            "chosen": [{"role": "assistant", "content": kept + " What do you think?"}],
            "rejected": [{"role": "assistant", "content": kept}]}
    prompt_ids, (chosen, rejected) = tokenize_pair(tokenizer, pair["prompt"], [pair["chosen"], pair["rejected"]], 512)
    shared = next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b)
    assert 5 < shared < len(chosen) - 3  # the kept sentence, then the added one
    with torch.no_grad():
        ids = torch.tensor([prompt_ids + chosen])
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        by_token = logps[len(prompt_ids) - 1:]  # the chosen reply's tokens
        config = TrainConfig(loss_type="sigmoid,sft_suffix", loss_weights="0,1")
        _, suffix = DPOTrainer(model, tokenizer, config).loss([pair])
        swapped = {**pair, "rejected": [{"role": "assistant", "content": "No."}]}
        _, whole = DPOTrainer(model, tokenizer, config).loss([swapped])
    assert suffix["nll"] == pytest.approx(-by_token[shared:].mean().item(), abs=1e-4)
    assert whole["nll"] == pytest.approx(-by_token.mean().item(), abs=1e-4)
