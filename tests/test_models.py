"""Resolving --model, clear errors for models that are not there, and the real default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import models
from engine.protocol import ModelError


def test_resolve_accepts_folders_gguf_files_and_hub_ids(tiny_model_dir, tmp_path):
    assert models.resolve(str(tiny_model_dir)) == (str(tiny_model_dir), {})
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve(str(gguf)) == (str(tmp_path), {"gguf_file": "m.Q4.gguf"})
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", {})


@pytest.mark.parametrize("spec,message", [
    ("./no-such-folder", "no such folder or file"),
    ("/nowhere/model.gguf", "GGUF file not found"),
    ("a/b/c", "no such folder or file"),
])
def test_resolve_names_what_is_missing(spec, message):
    with pytest.raises(ModelError, match=message):
        models.resolve(spec)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve(str(tmp_path))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelError, match="not a folder or a .gguf file"):
        models.resolve(str(tmp_path / "weights.txt"))


def test_unreachable_hub_id_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as caught:
        models.load_model("nobody-here/no-such-model-xyz", device="cpu")
    message = str(caught.value)
    assert "nobody-here/no-such-model-xyz" in message
    assert "\n" not in message


def test_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUI_ALIGN_HOME", str(tmp_path))
    assert models.home() == tmp_path


def test_add_lora_trains_only_the_adapter(tiny_model_dir):
    base, _ = models.load_model(str(tiny_model_dir), device="cpu")
    total = models.parameter_count(base)
    policy = models.add_lora(base, models.LoRAConfig(r=4, alpha=8))
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert models.parameter_count(policy) == total  # counts the base, not the adapter


@pytest.mark.default_model
def test_models_command_shows_the_default_model():
    from typer.testing import CliRunner

    from tui_align.cli import app

    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct" in result.output
    path = Path(result.output.split("path:")[1].split()[0])
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert "parameters: 134,515,008" in result.output
    assert "MiB" in result.output


@pytest.mark.default_model
def test_default_model_applies_its_chat_template_to_conversational_rows():
    from engine.data import tokenize_pair

    tokenizer = models.load_tokenizer(None)
    prompt = [{"role": "user", "content": "Count to three."}]
    prompt_ids, (chosen, rejected) = tokenize_pair(
        tokenizer, prompt,
        [[{"role": "assistant", "content": "1 2 3"}], [{"role": "assistant", "content": "No."}]],
    )
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>user\nCount to three.<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(chosen) == "1 2 3<|im_end|>\n"
    assert tokenizer.decode(rejected) == "No.<|im_end|>\n"
    # a standard (string) row gets the EOS token appended, as TRL does
    prompt_ids, (completion,) = tokenize_pair(tokenizer, "Hello", [" world"])
    assert tokenizer.decode(completion) == " world" + tokenizer.eos_token


@pytest.mark.default_model
def test_default_model_loads_offline_and_scores_text():
    import torch

    from engine.data import collate
    from engine.logprobs import sequence_logps

    model, tokenizer = models.load_model(None, device="cpu")
    prompt = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    good = tokenizer(" Paris.", add_special_tokens=False)["input_ids"]
    bad = tokenizer(" banana.", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logps = sequence_logps(model, **collate([(prompt, good), (prompt, bad)], tokenizer.pad_token_id))
    assert logps[0] > logps[1]  # the real weights, not a random model
    # converted to a bf16 checkpoint, loaded in bf16 where the CPU computes it natively
    assert model.dtype == (torch.bfloat16 if models.cpu_has_bf16() else torch.float32)


def test_auto_dtype_is_bf16_on_a_cpu_only_for_bf16_checkpoints_and_native_bf16(monkeypatch):
    import torch

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert models.pick_dtype("auto", "cpu", stored=torch.bfloat16) == torch.bfloat16
    assert models.pick_dtype("auto", "cpu", stored=torch.float32) == torch.float32  # the tests' tiny models
    assert models.pick_dtype("auto", "cpu", stored=None) == torch.float32
    assert models.pick_dtype("float32", "cpu", stored=torch.bfloat16) == torch.float32
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.pick_dtype("auto", "cpu", stored=torch.bfloat16) == torch.float32
