"""The live loop's guard against reward hacking: picks alone do not keep a version live whose
candidates are cut off, or repeat themselves, plainly more often than the baseline's (the first
version this run of the loop saw: v0 in a new session), or say one stock phrase whatever the prompt
(nothing at all included).

A person who prefers fuller replies pushes the length up, and DPO at a live learning rate can push
it past the token budget: most candidates are then cut off, rounds tie, and nothing pulls the length
back. A preference for list items can be won by items that repeat. Both show in the candidates the
person is shown (bench/RESULTS.md, issue 12: substance seed 2, listed seed 3), so the loop counts
them per version and rolls a version back to its parent once they are plainly worse. A new version
is also sampled on the person's latest prompts while they read (tui_align/guarding.py), so it can go back
before they see its replies, and the version trained after their last judgment is counted too. A warm
tone can be won by "I'm happy to help with that! Just feel free to ask." said to every prompt: nothing
repeats within a reply, but the replies to different prompts share their trigrams (bench/RESULTS.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.protocol import CUT_OFF, FINISHED
from tui_align.degeneration import repeated_ngrams, shared_ngrams

EVIDENCE = 8  # a version's candidates before it is judged (two rounds of four): fewer is noise
# A version goes back when fewer than FINISHED_FLOOR of its candidates finish and that is FINISHED_DROP
# under the baseline's rate. Both: 8 candidates of 2 prompts are a noisy rate (5 of 8 against a baseline's
# 8 of 8 sent good versions back, bench/RESULTS.md), and a fuller reply that mostly finishes is a preference.
FINISHED_FLOOR = 0.5
FINISHED_DROP = 0.3
REPEATED_RISE = 0.15  # ... or whose candidates repeat this much more of their word trigrams
# ... or whose candidates to different prompts share this much more of their trigrams (a reply under three words:
# itself): a healthy version's share 0-28% (one of a warm "I'm glad to help!" opening 51%), one stock reply's
# 61-88% (bench/RESULTS.md, issue 12)
SHARED_RISE = 0.5
SHARED_WINDOW = 32  # the newest candidates that measure it: its cost does not grow with the session


@dataclass
class Health:
    """One version's candidates so far: how many, how many finished, their repeated trigrams summed."""

    replies: int = 0
    finished: int = 0
    repeated: float = 0.0
    newest: deque = field(default_factory=lambda: deque(maxlen=SHARED_WINDOW))  # (prompt, text)

    def add(self, result: dict, prompt: str) -> None:
        reason = result.get("finish_reason")
        if reason not in (FINISHED, CUT_OFF):  # cancelled: the person stopped it, it says nothing
            return
        self.replies += 1
        self.finished += reason == FINISHED
        self.repeated += repeated_ngrams(result.get("text", ""))
        self.newest.append((prompt, result.get("text", "")))

    @property
    def shared_rate(self) -> float | None:
        """The share of trigrams its newest candidates have in common with those to other prompts (None: one prompt)."""
        by_prompt: dict[str, list[str]] = {}
        for prompt, text in self.newest:
            by_prompt.setdefault(prompt, []).append(text)
        return shared_ngrams(list(by_prompt.values())) if len(by_prompt) >= 2 else None

    @property
    def finished_rate(self) -> float:
        return self.finished / self.replies if self.replies else 1.0

    @property
    def repeated_rate(self) -> float:
        return self.repeated / self.replies if self.replies else 0.0


class ReplyGuard:
    def __init__(self):
        self.seen: dict[int, Health] = {}
        self.baseline: int | None = None

    def observe(self, version: int, result: dict, prompt: str) -> None:
        """Count one candidate of `version` (the engine's `done` payload for it) to `prompt` (the user's message)."""
        if self.baseline is None:
            self.baseline = version
        self.seen.setdefault(version, Health()).add(result, prompt)

    def problem(self, version: int) -> str | None:
        """Why `version` should not stay live, or None (also while either side has too few candidates)."""
        base, live = self.seen.get(self.baseline), self.seen.get(version)
        if version == self.baseline or base is None or live is None or min(base.replies, live.replies) < EVIDENCE:
            return None
        if live.finished_rate < FINISHED_FLOOR and live.finished_rate <= base.finished_rate - FINISHED_DROP:
            return (f"{live.finished} of v{version}'s {live.replies} replies finished, against "
                    f"{base.finished_rate:.0%} of v{self.baseline}'s")
        if live.repeated_rate >= base.repeated_rate + REPEATED_RISE:
            return (f"v{version}'s replies repeat {live.repeated_rate:.0%} of their word trigrams, "
                    f"v{self.baseline}'s {base.repeated_rate:.0%}")
        shared, base_shared = live.shared_rate, base.shared_rate or 0.0
        if shared is not None and shared >= base_shared + SHARED_RISE:
            return (f"v{version}'s replies to different prompts share {shared:.0%} of their word trigrams "
                    f"(one stock reply), v{self.baseline}'s {base_shared:.0%}")
        return None
