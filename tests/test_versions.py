"""Adapter versions on disk: standard PEFT folders, in-place reload, rollback, merge."""

from __future__ import annotations

import json

import torch

from engine.versions import (
    adapter_state, list_versions, load_adapter, reset_adapter, save_adapter, save_merged, version_dir,
)


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def logits_of(model, tokenizer):
    ids = tokenizer("Version control for weights.", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_versions_save_list_load_and_rollback(tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    initial = adapter_state(model)
    base_logits = logits_of(model, tokenizer)
    saved = {}
    for number in (1, 2):
        randomize(model, number)
        saved[number] = logits_of(model, tokenizer)
        save_adapter(model, version_dir(tmp_path, number), {"version": number})
    (tmp_path / "v0003.partial").mkdir()  # a crashed save is not a version
    (tmp_path / "notes").mkdir()
    assert list_versions(tmp_path) == [1, 2]
    assert list_versions(tmp_path / "missing") == []

    meta = load_adapter(model, version_dir(tmp_path, 1))
    assert meta["version"] == 1 and "saved" in meta
    assert torch.equal(logits_of(model, tokenizer), saved[1])
    load_adapter(model, version_dir(tmp_path, 2))
    assert torch.equal(logits_of(model, tokenizer), saved[2])
    reset_adapter(model, initial)
    assert torch.equal(logits_of(model, tokenizer), base_logits)


def test_adapter_state_is_a_copy(tiny_policy):
    model, _ = tiny_policy
    state = adapter_state(model)
    randomize(model, 7)
    changed = adapter_state(model)
    assert any(not torch.equal(state[k], changed[k]) for k in state)


def test_save_is_atomic_and_leaves_a_peft_folder(tiny_policy, tmp_path):
    model, _ = tiny_policy
    folder = save_adapter(model, tmp_path / "v0001", {"loss": 0.5})
    names = {p.name for p in folder.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "metadata.json"} <= names
    assert json.loads((folder / "metadata.json").read_text())["loss"] == 0.5
    assert not (tmp_path / "v0001.partial").exists()
    save_adapter(model, folder, {"loss": 0.25})  # overwriting a version replaces it whole
    assert json.loads((folder / "metadata.json").read_text())["loss"] == 0.25


def test_merged_model_loads_with_plain_transformers(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_policy
    randomize(model, 3)
    expected = logits_of(model, tokenizer)
    save_merged(model, tokenizer, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(logits_of(merged, tokenizer), expected, atol=1e-5)
