"""Reward models: a sequence classifier on the same base, trained on preference pairs.

The model is AutoModelForSequenceClassification (num_labels=1) with a LoRA adapter of
task type SEQ_CLS, so PEFT trains and saves the score head with the adapter. A pair's
loss is Bradley-Terry, `pairwise_reward_loss(chosen, rejected, margin)`, as TRL's
RewardTrainer. The saved folder (adapter + score head + tokenizer + metadata naming the
base model) is what `--reward rm:PATH` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.data import collate, preference_batch, tokenize_pair
from engine.protocol import UserError
from engine.logprobs import causal_lm, hidden_states
from engine.losses import pairwise_reward_loss
from engine.trainers.base import Trainer

KIND = "reward_model"


def load_reward_base(spec: str | None, device: str = "auto", dtype: str = "auto"):
    """(sequence classifier with a fresh 1-output score head, tokenizer) on the base `spec`."""
    from transformers import AutoModelForSequenceClassification, logging

    from engine.models import load_tokenizer, pick_device, pick_dtype, resolve

    where, kwargs = resolve(spec)
    device = pick_device(device)
    tokenizer = load_tokenizer(spec)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the score head is new by design: no "newly initialized" report
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=1, dtype=pick_dtype(dtype, device), **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def add_reward_lora(model, lora=None):
    from peft import LoraConfig, get_peft_model

    from engine.models import LoRAConfig

    lora = lora or LoRAConfig()
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="SEQ_CLS"))


def sequence_scores(model, input_ids, attention_mask) -> torch.Tensor:
    """One scalar per sequence: the score head on the last real token's hidden state."""
    hidden = hidden_states(model, input_ids, attention_mask)
    last = (attention_mask * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(-1)
    picked = hidden[torch.arange(len(last), device=last.device), last]
    return causal_lm(model).score(picked).squeeze(-1).float()


class RewardTrainer(Trainer):
    """Trains a reward model on {prompt, chosen, rejected} rows (+ optional margin)."""

    method = "rm"

    def loss(self, examples: list[dict]):
        batch = preference_batch(self.tokenizer, examples, self.config.max_length, self.device)
        chosen, rejected = sequence_scores(self.model, batch["input_ids"], batch["attention_mask"]).chunk(2)
        margin = None
        if any("margin" in ex for ex in examples):
            margin = torch.tensor([float(ex.get("margin", 0.0)) for ex in examples], device=self.device)
        loss = pairwise_reward_loss(chosen, rejected, margin)
        return loss, _pair_metrics(chosen, rejected)

    def save(self, folder, metadata: dict | None = None) -> Path:
        from engine.versions import save_adapter

        folder = save_adapter(self.model, folder, {"kind": KIND, "config": self.config.to_dict(), **(metadata or {})})
        self.tokenizer.save_pretrained(folder)
        return folder


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    margin = (chosen - rejected).detach()
    return {"accuracy": (margin > 0).float().mean().item(), "margin": margin.mean().item()}


class RewardModel:
    """A trained reward model used as a reward: `(prompts, responses) -> scores`."""

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int | None = 1024):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "RewardModel":
        from peft import PeftModel

        from transformers import AutoTokenizer

        path = Path(path)
        meta = path / "metadata.json"
        if not (path / "adapter_config.json").exists() or not meta.exists():
            raise UserError(f"rm:{path}: not a reward model folder (write one with `tui-align train rm`)")
        metadata = json.loads(meta.read_text())
        if metadata.get("kind") != KIND:
            raise UserError(f"rm:{path}: this adapter is not a reward model (kind {metadata.get('kind')!r})")
        base, _ = load_reward_base(metadata.get("model"), device=device)
        model = PeftModel.from_pretrained(base, str(path)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(model, tokenizer, max_length=metadata.get("config", {}).get("max_length", 1024))

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        device = next(self.model.parameters()).device
        conversational = bool(getattr(self.tokenizer, "chat_template", None))
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            sequences = []
            for prompt, response in zip(prompts[start:start + self.batch_size], responses[start:start + self.batch_size]):
                if conversational:  # the same tokenization as the preference rows it was trained on
                    prompt, response = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": response}]
                prompt_ids, (completion_ids,) = tokenize_pair(self.tokenizer, prompt, [response], self.max_length)
                sequences.append((prompt_ids, completion_ids))
            batch = collate(sequences, self.tokenizer.pad_token_id, device)
            scores.extend(sequence_scores(self.model, batch["input_ids"], batch["attention_mask"]).tolist())
        return scores
