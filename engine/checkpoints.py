"""Checkpoints of a batch run (`--save-steps`, `--resume-from-checkpoint`), laid out as HF Trainer's.

`checkpoint-N/` holds the adapter (a PEFT folder, loadable on its own), optimizer.pt,
scheduler.pt, rng_state.pth (torch's, CUDA's and the shuffle's) and trainer_state.json (the
step, the data position, and what the run was: method, model, data), so that a resumed run
ends with the same adapter as one that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.protocol import UserError

PREFIX = "checkpoint-"
STATE = "trainer_state.json"
RNG = "rng_state.pth"


@dataclass
class Position:
    """Where a run is: what a checkpoint must restore besides the weights and the optimizer."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    offset: int = 0  # index, in this epoch's shard, of the next batch
    micro: int = 0  # forward passes done (gradient accumulation counts them)
    epoch_rng: tuple | None = None  # the shuffle's random state before this epoch's shuffle


def fingerprint(rows: list[dict]) -> str:
    """What identifies the training rows (a checkpoint's data position means nothing on others)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(folder: Path, trainer, scheduler, position: Position, metrics: dict, identity: dict) -> Path:
    """Write checkpoint `folder` whole or not at all (written beside it, then renamed)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp, {"step": position.step, **metrics})
    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"torch": torch.get_rng_state(), "shuffle": position.epoch_rng,
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    torch.save(rng, tmp / RNG)
    place = {k: v for k, v in asdict(position).items() if k != "epoch_rng"}
    (tmp / STATE).write_text(json.dumps({**identity, "method": trainer.method, **place,
                                         "config": trainer.config.to_dict(), "metrics": metrics}, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def latest(run_dir: Path) -> Path | None:
    """The checkpoint of `run_dir` with the most steps (None: there is none)."""
    found = [p for p in run_dir.glob(PREFIX + "*") if p.name[len(PREFIX):].isdigit() and (p / STATE).exists()]
    return max(found, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def check(folder: Path, identity: dict, flag: str = "--resume-from-checkpoint") -> dict:
    """The checkpoint's trainer_state.json, if it fits this run (method, model and data); else UserError."""
    state_file = folder / STATE
    if not state_file.is_file():
        raise UserError(f"{flag} {folder}: not a checkpoint folder (no {STATE}; checkpoints are "
                        f"OUTPUT.partial/{PREFIX}N, written with --save-steps)")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{flag} {folder}: {STATE} is not valid JSON") from None
    for key, what in (("method", "method"), ("model", "model"), ("data", "data")):
        if state.get(key) != identity.get(key):
            raise UserError(f"{flag} {folder}: written by a run with another {what} "
                            f"({state.get(key)!r}, this run: {identity.get(key)!r})")
    return state


def load(folder: str | Path, trainer, scheduler, shuffle) -> Position:
    """Restore the adapter, the optimizer, the scheduler and the random states; returns the position."""
    from engine.versions import load_adapter

    folder = Path(folder)
    state = json.loads((folder / STATE).read_text())
    try:
        load_adapter(trainer.model, folder)
    except (RuntimeError, ValueError) as exc:  # another LoRA rank or base: the tensors do not fit
        raise UserError(f"--resume-from-checkpoint {folder}: its adapter does not fit this model "
                        f"({str(exc).splitlines()[0][:120]})") from None
    device = next(trainer.model.parameters()).device
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / RNG, weights_only=False)  # our own file: a tuple of Python ints among tensors
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng["shuffle"] is not None:
        shuffle.setstate(rng["shuffle"])
    return Position(step=state["step"], epoch=state["epoch"], offset=state["offset"], micro=state["micro"],
                    epoch_rng=rng["shuffle"])
