"""Adapter versions on disk: a standard PEFT folder (+ value head) + metadata.json.

A session keeps `versions/v0001/`, `versions/v0002/`, ...; version 0 is the base model
(adapter off, or freshly initialised). Loading copies the saved tensors into the live
adapter in place, so a rollback restores the weights exactly without reloading the base.

Importing this module imports no torch: the TUI checks a session's versions with `problem`
(a torch-free reading of each safetensors header against its file's size) before it starts
an engine on one, and the engine runs the same check before it loads the model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from engine.protocol import UserError

ADAPTER = "adapter_model.safetensors"
METADATA = "metadata.json"
VALUE_HEAD = "value_head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


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


def safetensors_problem(path: Path) -> str | None:
    """What makes `path` not a whole safetensors file (missing, truncated, a bad header), or None.

    The format: an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
    shape and byte range, then the tensors' bytes; a whole file ends where the last range ends.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if size < 8 or length > size - 8:
                return f"{path.name} is truncated ({size} bytes, not even its header)"
            header = json.loads(file.read(length))
        header.pop("__metadata__", None)
        end = 0
        for name, tensor in header.items():
            begin, stop = tensor["data_offsets"]
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            if stop - begin != count * DTYPE_BYTES[tensor["dtype"]]:
                return f"{path.name}: tensor {name} has {stop - begin} bytes for its shape {tensor['shape']}"
            end = max(end, stop)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as exc:
        return f"{path.name}: {exc.strerror}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{path.name} has an unreadable header"
    if size != 8 + length + end:
        return f"{path.name} is {'truncated' if size < 8 + length + end else 'too long'} ({size} bytes of {8 + length + end})"
    return None


def problem(folder: Path, lora_r: int | None = None) -> str | None:
    """Why the saved version in `folder` cannot be loaded (a file missing, truncated or unreadable; an
    adapter of another LoRA rank than `lora_r`), or None if it is intact. Reads no tensor."""
    if not folder.is_dir():
        return "its folder is missing"
    config = {}
    for name in (ADAPTER_CONFIG, METADATA):
        if name == METADATA and not (folder / name).exists():
            continue  # optional
        try:
            loaded = json.loads((folder / name).read_text())
        except FileNotFoundError:
            return f"{name} is missing"
        except (OSError, ValueError):
            return f"{name} is unreadable"
        if not isinstance(loaded, dict):
            return f"{name} is unreadable"
        config = loaded if name == ADAPTER_CONFIG else config
    found = safetensors_problem(folder / ADAPTER)
    if found is None and (folder / VALUE_HEAD).exists():
        found = safetensors_problem(folder / VALUE_HEAD)
    if found is None and lora_r is not None and config.get("r") != lora_r:
        found = f"its adapter has LoRA rank {config.get('r')}, this engine's is {lora_r} (--lora-r)"
    return found


def newest_intact(root: str | Path, lora_r: int | None = None) -> int:
    """The newest saved version that can be loaded (0, the base model, if none can)."""
    return next((n for n in reversed(list_versions(root)) if problem(version_dir(root, n), lora_r) is None), 0)


def check_start(root: str | Path, version: int | None, lora_r: int) -> int:
    """The version an engine on `root` starts at (`version`; None: the latest saved); a version that is
    not saved, or cannot be loaded, is a UserError that names it and the newest intact one."""
    saved = list_versions(root)
    start = (saved or [0])[-1] if version is None else version
    if start and start not in saved:
        raise UserError(f"--version {start}: no such version in {root} "
                        f"(saved: {', '.join(map(str, saved)) or 'none'}; 0 is the base model)")
    found = problem(version_dir(root, start), lora_r) if start else None
    if found:
        raise UserError(f"version {start} in {root} cannot be loaded: {found}; "
                        f"start at the newest intact one with --version {newest_intact(root, lora_r)}")
    return start


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
    for path in [*tmp.iterdir(), tmp]:  # on disk before the rename, so a power cut leaves no half version
        _fsync(path)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _fsync(folder.parent)  # the rename itself
    return folder


def remove_partial(root: str | Path) -> None:
    """Remove the `.partial` folders a failed or killed write left under `root`."""
    for path in Path(root).glob("*.partial"):
        shutil.rmtree(path, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
