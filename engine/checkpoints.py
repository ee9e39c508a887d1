"""Checkpoints of a batch run (`--save-steps`, `--resume-from-checkpoint`), laid out as HF Trainer's.

`checkpoint-N/` holds the adapter (a PEFT folder, loadable on its own; PPO's value head beside
it), optimizer.pt, scheduler.pt (a run that has a scheduler), rng_state.pth (Python's, torch's,
CUDA's, the shuffle's, and the trainer's own generator if it has one: PPO's mini-batch order) and
trainer_state.json (the step, the data position, PPO's adaptive KL coefficient, and what the run
was: method, model, data, reward), so that a resumed run ends with the same adapter as one that
was never stopped. The same format serves the epochs over rows of `fit` and the prompt passes of
PPO and GRPO (engine/rollouts.py).
"""

from __future__ import annotations

import hashlib
import json
import random
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


def fingerprint(rows: list) -> str:
    """What identifies the training rows or prompts (a checkpoint's data position means nothing on others)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(folder: Path, trainer, scheduler, position: Position, metrics: dict, identity: dict) -> Path:
    """Write checkpoint `folder` whole or not at all (written beside it, then renamed)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save(tmp, {"step": position.step, **metrics})
    torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    generator = getattr(trainer, "generator", None)
    rng = {"torch": torch.get_rng_state(), "shuffle": position.epoch_rng, "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           "trainer": generator.get_state() if generator is not None else None}
    torch.save(rng, tmp / RNG)
    place = {k: v for k, v in asdict(position).items() if k != "epoch_rng"}
    own = {"kl_coef": trainer.kl_coef} if hasattr(trainer, "kl_coef") else {}
    (tmp / STATE).write_text(json.dumps({**identity, "method": trainer.method, **place, **own,
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
    for key in ("method", "model", "data", *(k for k in identity if k not in ("method", "model", "data"))):
        if state.get(key) != identity.get(key):
            raise UserError(f"{flag} {folder}: written by a run with another {key} "
                            f"({state.get(key)!r}, this run: {identity.get(key)!r})")
    return state


def load(folder: str | Path, trainer, scheduler, shuffle) -> Position:
    """Restore the adapter (and value head), the optimizer, the scheduler (None: the run has none),
    the trainer's own state and the random states; returns the position."""
    from engine.versions import load_adapter

    folder = Path(folder)
    state = json.loads((folder / STATE).read_text())
    try:
        load_adapter(trainer.model, folder, value_head=getattr(trainer, "value_head", None))
    except (RuntimeError, ValueError) as exc:  # another LoRA rank or base: the tensors do not fit
        raise UserError(f"--resume-from-checkpoint {folder}: its adapter does not fit this model "
                        f"({str(exc).splitlines()[0][:120]})") from None
    device = next(trainer.model.parameters()).device
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if "kl_coef" in state:
        trainer.kl_coef = state["kl_coef"]
    rng = torch.load(folder / RNG, weights_only=False)  # our own file: tuples of Python ints among tensors
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if rng["shuffle"] is not None:
        shuffle.setstate(rng["shuffle"])
    if rng.get("python") is not None:
        random.setstate(rng["python"])
    if rng.get("trainer") is not None:
        trainer.generator.set_state(rng["trainer"])
    return Position(step=state["step"], epoch=state["epoch"], offset=state["offset"], micro=state["micro"],
                    epoch_rng=rng["shuffle"])
