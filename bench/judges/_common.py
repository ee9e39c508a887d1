"""What the judges share: the finish rule (a cut-off reply loses to a finished one; two cut-off: no pick), and
whether a reply answers its prompt (its key words, for the judges that want the answer too)."""

from __future__ import annotations

import re
from pathlib import Path

WORD = re.compile(r"[a-z']+")
TOKEN = re.compile(r"[a-z0-9']+")  # a key may be a number: "0", "384"
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


def _answer_keys() -> dict[str, tuple[str, ...]]:
    keys = {}
    for line in Path(__file__).with_name("answer_keys.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, stems = line.split("|")
            keys[prompt.strip()] = tuple(stem.strip() for stem in stems.split(","))
    return keys


ANSWER_KEYS = _answer_keys()  # bench/judges/answer_keys.txt: the built-in held-out prompts and the judges' own


def answers(prompt: str, reply: str) -> bool:
    """Whether the reply names one of the prompt's key words (a prompt without keys: always)."""
    stems = ANSWER_KEYS.get(prompt.strip())
    return stems is None or any(token.startswith(stems) for token in TOKEN.findall(reply.lower()))
