"""What the judges share: the finish rule (a cut-off reply loses to a finished one; two cut-off: no pick)."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z']+")
STOP = set("a an the of to in on and or for is are was be it this that with as at by you your i we my "
           "me what how why can do does one give write tell about from".split())


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOP and len(w) > 2}


def by_score(a, b, score) -> int | None:
    """The reply with the higher score; finished beats cut off; equal scores or two cut-off: None."""
    fa, fb = getattr(a, "finished", True), getattr(b, "finished", True)
    if not fa and not fb:
        return None
    if fa != fb:
        return 0 if fa else 1
    sa, sb = score(a), score(b)
    if sa == sb:
        return None
    return 0 if sa > sb else 1
