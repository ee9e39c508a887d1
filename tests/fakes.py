"""A fake engine client: EngineClient's async API with no process and no model, for tests in milliseconds.

It answers like the engine (docs/protocol.md): `generate` streams one token event per word
of each candidate's canned text, then `done`; `update` bumps the version and records what it
was sent; `fail_next` makes the next call of a kind raise, `die()` kills it. `write_version`
puts a saved version on disk as the engine would (the TUI checks them before a start).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from engine import versions as vs
from tui_align.client import EngineDied, EngineError


class FakeEngine:
    def __init__(self, replies: list[str] | None = None, finish_reason: str = "stop", model: str | None = None,
                 candidates: list[dict] | None = None):
        self.replies = replies or [c["text"] for c in candidates or []] or ["Short.", "A longer reply here."]
        self.finish_reason = finish_reason
        self.candidates = candidates  # whole `done` candidates (finish reasons, tokens), when given
        self.model = model
        self.version = 0
        self.start_version: int | None = None
        self.info: dict = {}
        self.returncode: int | None = None
        self.stderr_tail = ""
        self.parents: dict[int, int] = {}  # version -> the version it was trained from
        self.updates: list[dict] = []  # every update request: method, examples, hyperparameters
        self.scored: list[list[dict]] = []
        self.generated: list[dict] = []
        self.starts = 0
        self.fail_next: dict[str, Exception] = {}
        self.update_gate: asyncio.Event | None = None  # set: updates wait for it (an update "running")
        self.update_seconds = 0.0  # how long an update takes
        self._alive = False

    @property
    def alive(self) -> bool:
        return self._alive

    def die(self, code: int = -9, stderr: str = "") -> None:
        self._alive, self.returncode, self.stderr_tail = False, code, stderr

    def _check(self, kind: str) -> None:
        if not self._alive:
            raise EngineDied(self.returncode, self.stderr_tail)
        if kind in self.fail_next:
            raise self.fail_next.pop(kind)

    async def start(self) -> dict:
        self.starts += 1
        if "start" in self.fail_next:
            raise self.fail_next.pop("start")
        self._alive = True
        self.version = self.start_version if self.start_version is not None else max([0, *self.parents])
        self.info = {"model": self.model or "tiny", "device": "cpu", "version": self.version}
        return self.info

    async def restart(self) -> dict:
        return await self.start()

    async def generate(self, messages, n=2, max_new_tokens=64, temperature=0.8, top_p=0.95, seed=None, version=None):
        self._check("generate")
        if version is not None and version and version not in self.parents:
            raise EngineError("bad_request", f"no version {version}")
        self.generated.append({"messages": messages, "n": n, "seed": seed,
                               "version": self.version if version is None else version})
        texts = [self.replies[i % len(self.replies)] + ("" if i < len(self.replies) else f" ({i})") for i in range(n)]
        if version is not None:  # another version's replies: told apart by a mark
            texts = [f"{t} [v{version}]" for t in texts]
        for i, text in enumerate(texts):
            for word in text.split(" "):
                await asyncio.sleep(0)
                yield {"type": "token", "candidate": i, "text": word + " "}
        done = [{"text": t, "finish_reason": self.finish_reason, "tokens": len(t.split())} for t in texts]
        if self.candidates:
            done = [dict(self.candidates[i % len(self.candidates)], text=t) for i, t in enumerate(texts)]
        yield {"type": "done", "version": self.version if version is None else version, "candidates": done}

    async def score_reference(self, examples):
        self._check("score_reference")
        self.scored.append(examples)
        return [{**e, "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0} for e in examples]

    async def update(self, method, examples, hyperparameters=None, on_progress=None):
        self._check("update")
        if method == "grpo" and not all(len(e["completions"]) == len(e["scores"]) >= 2 for e in examples):
            raise EngineError("bad_request", "a grpo example is a group: at least 2 completions, one score each")
        unlabelled = [i for i, e in enumerate(examples, 1) if method == "kto" and not isinstance(e.get("label"), bool)]
        if unlabelled:  # as the engine refuses it (engine.data.validate)
            raise EngineError("bad_request", f"example {unlabelled[0]}: missing key label for kto data")
        self.updates.append({"method": method, "examples": examples, "hyperparameters": hyperparameters})
        if self.update_gate is not None:
            await self.update_gate.wait()
        await asyncio.sleep(self.update_seconds)
        self._check("update")  # it may have died meanwhile
        if on_progress:
            on_progress({"type": "progress", "step": 1})
        new = max([0, *self.parents]) + 1
        self.parents[new] = self.version
        self.version = new
        return {"version": new, "metrics": {"loss": 0.5}, "seconds": 0.01}

    async def versions(self):
        self._check("versions")
        return [{"version": 0, "parent": None}] + [{"version": v, "parent": p} for v, p in sorted(self.parents.items())]

    async def rollback(self, version):
        self._check("rollback")
        if version and version not in self.parents:
            raise EngineError("bad_request", f"no version {version}")
        self.version = version
        return {"version": version}

    async def cancel(self, request_id=None):
        pass

    async def shutdown(self):
        self._alive = False

    async def close(self):
        self._alive = False


def write_safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    """A whole safetensors file of float32 tensors (shape by name), written by hand as the format says."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4 * shape[0] * shape[1]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(offset))


def write_version(root: Path, number: int, r: int = 16, parent: int = 0) -> Path:
    folder = vs.version_dir(root, number)
    folder.mkdir(parents=True)
    write_safetensors(folder / vs.ADAPTER, {"a.lora_A.weight": [r, 64], "a.lora_B.weight": [64, r]})
    (folder / vs.ADAPTER_CONFIG).write_text(json.dumps({"r": r, "lora_alpha": 2 * r, "peft_type": "LORA"}))
    (folder / vs.METADATA).write_text(json.dumps({"parent": parent, "method": "dpo"}))
    return folder
