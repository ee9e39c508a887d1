"""Pairwise judges for `tui-align simulate`: `(prompt, response_a, response_b) -> 0 | 1 | None`.

0 picks a, 1 picks b, None declines (stored as a tie, never trained on). The responses are
`Reply` objects: plain strings that also carry `finish_reason` ("stop" when the model ended
the reply, "length" when max_new_tokens cut it off) and `tokens`, so a judge can see what
a person sees in the TUI. A cut-off reply's real length is unknown: the built-in judges
decline to compare two of them rather than teach the model noise.

`--judge` takes `shorter`, `longer`, `package.module:function` or `path/to/file.py:function`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from engine.protocol import CUT_OFF, UserError


class Reply(str):
    """A reply's text, with `finish_reason` and `tokens` attached."""

    finish_reason: str | None = None
    tokens: int | None = None

    def __new__(cls, text: str, finish_reason: str | None = None, tokens: int | None = None):
        reply = super().__new__(cls, text)
        reply.finish_reason, reply.tokens = finish_reason, tokens
        return reply

    @property
    def finished(self) -> bool:
        return self.finish_reason != CUT_OFF


def shorter(prompt: str, a: Reply, b: Reply) -> int | None:
    """The shorter reply; a finished reply is shorter than a cut-off one; two cut-off: no pick."""
    return _compare(a, b, sign=-1)


def longer(prompt: str, a: Reply, b: Reply) -> int | None:
    """The longer reply; a cut-off reply is longer than a finished one; two cut-off: no pick."""
    return _compare(a, b, sign=1)


def _compare(a: Reply, b: Reply, sign: int) -> int | None:
    finished_a, finished_b = getattr(a, "finished", True), getattr(b, "finished", True)
    if not finished_a and not finished_b:
        return None
    if finished_a != finished_b:  # only the finished one's length is known, and it is the smaller
        return (0 if finished_a else 1) if sign < 0 else (1 if finished_a else 0)
    if len(a) == len(b):
        return None
    return 0 if (len(a) - len(b)) * sign > 0 else 1


BUILT_IN = {"shorter": shorter, "longer": longer}


def load_judge(spec: str):
    """A judge by name, `module:function` or `file.py:function`; UserError if it can't be found."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    return load_function(spec, "--judge", "shorter, longer, ")


def load_function(spec: str, option: str, names: str = "") -> callable:
    """`module:function` or `path/file.py:function` (a judge, an editor); UserError naming `option`."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UserError(f"{option} {spec}: use {names}module:function or path.py:function")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"{option} {spec}: no such file {path}")
        loader = importlib.util.spec_from_file_location(f"tui_align_user_{path.stem}", path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"{option} {spec}: {path} failed to import ({type(exc).__name__}: {exc})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise UserError(f"{option} {spec}: cannot import {where} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{option} {spec}: {where} has no function {name}")
    return function


def checked_edit(editor, spec: str, prompt: str, reply: Reply) -> str | None:
    """Call the editor `(prompt, reply) -> corrected reply or None`; anything else is a UserError."""
    try:
        edited = editor(prompt, reply)
    except Exception as exc:
        raise UserError(f"--editor {spec} raised {type(exc).__name__}: {exc}") from None
    if edited is not None and not isinstance(edited, str):
        raise UserError(f"--editor {spec} returned {edited!r}: an editor returns a string or None")
    return edited if edited and edited != reply else None


def checked_pick(judge, spec: str, prompt: str, a: Reply, b: Reply) -> int | None:
    """Call the judge; a result other than 0, 1 or None is a UserError naming the judge."""
    try:
        pick = judge(prompt, a, b)
    except Exception as exc:  # the user's code: report it as one line, like any bad input
        raise UserError(f"--judge {spec} raised {type(exc).__name__}: {exc}") from None
    if pick not in (0, 1, None) or isinstance(pick, bool):
        raise UserError(f"--judge {spec} returned {pick!r}: a judge returns 0, 1 or None")
    return pick


def best_of(judge, spec: str, prompt: str, replies: list[Reply]) -> int | None:
    """The slot a person picking the best of N would press, from the pairwise judge: the winner of a
    knock-out in shown order (a tie keeps the holder); None when no reply beats another (all ties)."""
    best, decided = 0, False
    for challenger in range(1, len(replies)):
        pick = checked_pick(judge, spec, prompt, replies[best], replies[challenger])
        if pick is not None:
            best, decided = (best, challenger)[pick], True
    return best if decided else None


def group_scores(judge, spec: str, prompt: str, replies: list[Reply]) -> list[int]:
    """A pairwise judge's 1-5 scores of N replies (simulate's GRPO person): a round robin within the
    group, each pair judged once in both orders (so a judge that favours a side cancels out), a win 1,
    a tie or no pick 1/2; score = 1 + round(4 x wins / games). The best reply of a clear ranking gets 5,
    the worst 1, and all-equal replies 3 each (no advantage)."""
    n = len(replies)
    wins = [0.0] * n
    for i in range(n):
        for j in range(n):
            if i != j:
                pick = checked_pick(judge, spec, prompt, replies[i], replies[j])
                if pick is None:
                    wins[i] += 0.25
                    wins[j] += 0.25
                else:
                    wins[i if pick == 0 else j] += 0.5
    games = n - 1
    return [1 + round(4 * w / games) for w in wins]
