"""Adapter versions on disk: a standard PEFT folder (+ value head) + metadata.json.

A session keeps `versions/v0001/`, `versions/v0002/`, ...; version 0 is the base model
(adapter off, or freshly initialised). Loading copies the saved tensors into the live
adapter in place, so a rollback restores the weights exactly without reloading the base.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

ADAPTER = "adapter_model.safetensors"
METADATA = "metadata.json"
VALUE_HEAD = "value_head.safetensors"


def version_dir(root: str | Path, number: int) -> Path:
    return Path(root) / f"v{number:04d}"


def list_versions(root: str | Path) -> list[int]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        int(p.name[1:]) for p in root.iterdir()
        if p.name.startswith("v") and p.name[1:].isdigit() and (p / "adapter_config.json").exists()
    )


def save_adapter(model, folder: str | Path, metadata: dict | None = None, value_head=None, state=None) -> Path:
    """Write the adapter (and value head) atomically: a crash leaves no half version.

    The folder is what PEFT's save_pretrained writes (adapter_model.safetensors and
    adapter_config.json). `state`: the adapter's tensors by PEFT name, if the caller keeps
    them (LiveEngine does: collecting them takes 20 ms, more than writing them).
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = get_peft_model_state_dict(model) if state is None else state
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp / ADAPTER, metadata={"format": "pt"})
    model.peft_config[model.active_adapter].save_pretrained(tmp)
    if value_head is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}, tmp / VALUE_HEAD)
    (tmp / METADATA).write_text(json.dumps({"saved": time.time(), **(metadata or {})}, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def load_adapter(model, folder: str | Path, value_head=None) -> dict:
    """Copy a saved adapter (and value head) into the live model; returns its metadata."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    device = next(model.parameters()).device
    state = load_file(folder / ADAPTER, device=str(device))
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: adapter does not fit this model ({len(unexpected)} unexpected tensors)")
    if value_head is not None and (folder / VALUE_HEAD).exists():
        value_head.load_state_dict(load_file(folder / VALUE_HEAD, device=str(device)))
    meta = folder / METADATA
    return json.loads(meta.read_text()) if meta.exists() else {}


def reset_adapter(model, initial_state: dict) -> None:
    """Back to version 0: the adapter's initial tensors (LoRA B = 0, so the base model)."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, initial_state)


def adapter_state(model) -> dict:
    """A detached copy of the adapter tensors (to restore after a discarded update)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def save_merged(model, tokenizer, folder: str | Path) -> Path:
    """A full model folder with the adapter merged in, loadable by plain transformers."""
    folder = Path(folder)
    merged = model.merge_and_unload()
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
