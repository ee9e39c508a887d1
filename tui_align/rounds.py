"""One round of the live loop, as plain data: a prompt, N candidates shown in a random order, feedback.

No Textual here: the LiveLoop fills it and records its judgments, the chat screen shows it.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

SLOT_LETTERS = "abcdefgh"
SCORED_METHODS = ("ppo", "grpo")  # sessions whose rounds are judged by scoring each candidate 1-5


class Phase(enum.Enum):
    LOADING = "loading"  # no engine yet: nothing can be sent
    PROMPT = "prompt"  # the input is live, votes are not
    GENERATING = "generating"  # candidates stream: neither typing nor votes
    JUDGING = "judging"  # candidates are done: votes are live, typing is not


@dataclass
class Round:
    turn_id: int
    prompt: list[dict]  # the conversation so far, ending with this round's user message
    shown_order: list[int]  # shown_order[slot] = index of the candidate shown in that slot
    texts: list[str] = field(default_factory=list)  # by candidate index, as streamed
    results: list[dict] = field(default_factory=list)  # the engine's `done` candidates
    response_ids: list[int] = field(default_factory=list)  # by candidate index, once stored
    version: int = 0  # the adapter version that produced the candidates
    versions: list[int] | None = None  # an arena round: the version of each candidate (blind to the person)
    ranking: list[int] = field(default_factory=list)  # slots pressed so far, best first
    scores: dict[int, int] = field(default_factory=dict)  # slot -> 1..5 (ppo, grpo)
    complete: bool = False  # judged and stored: the next key starts the next round

    @classmethod
    def start(cls, turn_id: int, prompt: list[dict], n: int, rng: random.Random, version: int = 0,
              versions: list[int] | None = None) -> Round:
        """Left/right order is shuffled per round (as Chatbot Arena does): position bias stays out of the data."""
        order = list(range(n))
        rng.shuffle(order)
        return cls(turn_id, prompt, order, [""] * n, version=version, versions=versions)

    @property
    def n(self) -> int:
        return len(self.shown_order)

    def slot_of(self, candidate: int) -> int:
        return self.shown_order.index(candidate)

    @property
    def shown(self) -> list[int]:
        """Response ids as shown, first slot first."""
        return [self.response_at(s) for s in range(self.n)]

    def next_unscored(self) -> int | None:
        """The first slot without a score: the one the next score key judges."""
        return next((s for s in range(self.n) if s not in self.scores), None)

    def response_at(self, slot: int) -> int:
        return self.response_ids[self.shown_order[slot]]

    def text_at(self, slot: int) -> str:
        candidate = self.shown_order[slot]
        return self.results[candidate]["text"] if self.results else self.texts[candidate]

    def others(self, slot: int) -> list[int]:
        """Response ids of every slot but this one, in shown order."""
        return [self.response_at(s) for s in range(self.n) if s != slot]

    def add_rank(self, slot: int) -> bool:
        """Record the next-best slot of a ranking; True once the ranking is complete (the last is implied)."""
        if slot not in self.ranking:
            self.ranking.append(slot)
        if len(self.ranking) == self.n - 1:
            self.ranking += [s for s in range(self.n) if s not in self.ranking]
            return True
        return False

    def best_scored(self) -> int:
        """The slot with the highest score (the leftmost among equals)."""
        return max(range(self.n), key=lambda s: (self.scores.get(s, 0), -s))
