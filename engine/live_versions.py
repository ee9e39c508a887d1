"""The live engine's versions: saving, listing, loading and borrowing the adapter's saved states.

The policy has one adapter whose tensors are the live version. A saved version is copied into
those tensors in place (rollback, a resumed session), or lent to them for the length of a
job's step and then put back exactly (`generate` with a `version`, an arena round). The
folders themselves are engine/versions.py's (torch-free, so the TUI can check them too).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from peft import get_peft_model_state_dict

from engine import versions as vs
from engine.data import DataError
from engine.models import _first_line
from engine.protocol import UserError

VERSION_CACHE = 4  # saved versions' adapters kept in memory for `generate` with a `version` (arena rounds)


class LiveVersions:
    """The versions under `root` of `policy`'s adapter (version 0: its initial tensors)."""

    def __init__(self, policy, root: Path):
        self.policy, self.root = policy, root
        self.initial = vs.adapter_state(policy)
        self.adapter = get_peft_model_state_dict(policy)  # the live tensors themselves, by PEFT name
        self.device = str(next(policy.parameters()).device)
        self._kept: dict[int, dict] = {}
        root.mkdir(parents=True, exist_ok=True)
        vs.remove_partial(root)

    def listing(self) -> list[dict]:
        out = [{"version": 0, "parent": None, "method": None, "metrics": {}, "saved": None, "examples": 0}]
        for number in vs.list_versions(self.root):
            meta_file = vs.version_dir(self.root, number) / vs.METADATA
            meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
            out.append({"version": number, "parent": meta.get("parent"), "method": meta.get("method"),
                        "metrics": meta.get("metrics", {}), "saved": meta.get("saved"),
                        "examples": meta.get("examples", 0)})
        return out

    def check(self, version: int) -> None:
        if version != 0 and version not in vs.list_versions(self.root):
            raise DataError(f"no version {version}: the versions are 0, "
                            + ", ".join(map(str, vs.list_versions(self.root))))

    def resume(self, version: int) -> None:
        """Load the version an engine starts at; whole files whose tensors do not fit: one line, exit 2."""
        try:
            vs.load_adapter(self.policy, vs.version_dir(self.root, version))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"version {version} in {self.root} cannot be loaded: {_first_line(exc)}") from None

    def load(self, version: int, value_head=None) -> None:
        """Make `version` the live adapter (and the value head's, where one is saved)."""
        if version == 0:
            vs.reset_adapter(self.policy, self.initial)
        else:
            vs.load_adapter(self.policy, vs.version_dir(self.root, version), value_head=value_head)

    def save_next(self, metadata: dict, value_head=None) -> int:
        """Save the live adapter as the next version; returns its number."""
        version = max(vs.list_versions(self.root) + [0]) + 1
        vs.save_adapter(self.policy, vs.version_dir(self.root, version), state=self.adapter,
                        value_head=value_head, metadata=metadata)
        return version

    def export(self, path: str, tokenizer, metadata: dict, value_head=None) -> Path:
        """Save the live adapter (and the tokenizer) to a new or empty folder outside the session."""
        folder = Path(path).expanduser()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(f"save: {folder} already exists and is not empty")
        vs.save_adapter(self.policy, folder, value_head=value_head, metadata=metadata, state=self.adapter)
        tokenizer.save_pretrained(folder)
        return folder

    @staticmethod
    def export_merged(folder: Path, tokenizer, base) -> None:
        """`folder`'s adapter merged into `base` (a fresh copy of the base model), saved under folder/merged."""
        from peft import PeftModel

        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        merged.save_pretrained(folder / "merged")
        tokenizer.save_pretrained(folder / "merged")

    def state(self, version: int) -> dict:
        """A saved version's adapter tensors (by PEFT name, on the model's device), read from disk once."""
        if version not in self._kept:
            if len(self._kept) >= VERSION_CACHE:  # oldest first
                del self._kept[next(iter(self._kept))]
            if version == 0:
                self._kept[0] = self.initial
            else:
                from safetensors.torch import load_file

                state = load_file(vs.version_dir(self.root, version) / vs.ADAPTER, device=self.device)
                self._kept[version] = {k: state[k].to(self.adapter[k].dtype) for k in self.adapter}
        return self._kept[version]

    @contextlib.contextmanager
    def lent(self, state: dict | None):
        """Run with another version's adapter in the live tensors, then put the live values back exactly."""
        if state is None:
            yield
            return
        with torch.no_grad():
            live = {k: v.detach().clone() for k, v in self.adapter.items()}
            for k, v in self.adapter.items():
                v.copy_(state[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in self.adapter.items():
                    v.copy_(live[k])
