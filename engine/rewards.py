"""Reward functions for PPO: `(prompts, responses) -> one float per response`.

`load_reward(spec)` turns a --reward value into one:
  length                  number of words of the response (the classic TRL PPO demo)
  rm:PATH                 a reward model folder written by `tui-align train rm`
  module:function         any importable callable
  path/to/file.py:func    a function in a Python file

User code is imported only from this explicit flag. When it fails (on import, when it
raises, or when it returns the wrong thing) the UserError names the user's own file, line
and source line, not ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import traceback
from pathlib import Path
from typing import Protocol

from engine.protocol import UserError


class Reward(Protocol):
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]: ...


def length(prompts: list[str], responses: list[str]) -> list[float]:
    """Number of words of each response."""
    return [float(len(response.split())) for response in responses]


BUILTINS = {"length": length}


def load_reward(spec: str, device: str = "cpu") -> Reward:
    """A checked reward from a --reward value (see the module docstring)."""
    if spec in BUILTINS:
        return CheckedReward(BUILTINS[spec], spec)
    if spec.startswith("rm:"):
        from engine.trainers.reward import RewardModel

        return CheckedReward(RewardModel.load(spec[3:], device=device), spec)
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name:
        raise UserError(f"--reward {spec}: choose {', '.join(BUILTINS)}, rm:PATH, module:function or file.py:function")
    module = _import_user_code(spec, source)
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"--reward {spec}: {source} has no function {name!r}")
    return CheckedReward(function, spec, getattr(module, "__file__", None))


def _import_user_code(spec: str, source: str):
    path = Path(source)
    try:
        if source.endswith(".py") or "/" in source or "\\" in source:
            if not path.is_file():
                raise UserError(f"--reward {spec}: no such file {source}")
            module_name = f"tui_align_reward_{path.stem}"
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module
            loader_spec.loader.exec_module(module)
            return module
        return importlib.import_module(source)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name == source or source.startswith(f"{exc.name}."):
            raise UserError(f"--reward {spec}: no module named {source!r}") from None
        raise UserError(f"--reward {spec}: importing {source} failed: {describe(exc, str(path))}") from None
    except BaseException as exc:  # noqa: BLE001 - any failure of user code becomes one clear line
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserError(f"--reward {spec}: importing {source} failed: {describe(exc, str(path))}") from None


class CheckedReward:
    """Calls a reward and checks its answer: one finite number per response."""

    def __init__(self, function, spec: str, user_file: str | None = None):
        self.function = function
        self.spec = spec
        self.user_file = user_file

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        try:
            scores = self.function(list(prompts), list(responses))
        except KeyboardInterrupt:
            raise
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--reward {self.spec} raised {describe(exc, self.user_file)}") from None
        if hasattr(scores, "tolist"):  # a tensor or an array
            scores = scores.tolist()
        if not isinstance(scores, (list, tuple)):
            raise UserError(f"--reward {self.spec} must return a list of numbers, got {type(scores).__name__}")
        if len(scores) != len(responses):
            raise UserError(f"--reward {self.spec} returned {len(scores)} scores for {len(responses)} responses")
        checked = []
        for i, score in enumerate(scores):
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise UserError(f"--reward {self.spec} returned {score!r} for response {i + 1}: scores must be finite numbers")
            checked.append(float(score))
        return checked


def describe(exc: BaseException, user_file: str | None = None) -> str:
    """`Type: message at file:line: source line`, pointing at the user's own frame."""
    what = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, SyntaxError) and exc.filename:
        text = (exc.text or "").strip()
        return f"SyntaxError: {exc.msg} at {exc.filename}:{exc.lineno}" + (f": {text}" if text else "")
    frames = traceback.extract_tb(exc.__traceback__)
    ours = str(Path(__file__).resolve().parent)
    frame = None
    if user_file:  # the deepest frame in the user's file
        target = str(Path(user_file).resolve())
        frame = next((f for f in reversed(frames) if str(Path(f.filename).resolve()) == target), None)
    if frame is None:  # else the deepest frame that is not ours nor importlib's
        frame = next((f for f in reversed(frames)
                      if not str(Path(f.filename).resolve()).startswith(ours) and "importlib" not in f.filename), None)
    if frame is None:
        return what
    line = (frame.line or "").strip()
    return f"{what} at {frame.filename}:{frame.lineno}" + (f": {line}" if line else "")
