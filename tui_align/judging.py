"""The person's judgments through the live loop: each one committed before it returns, and each
one that can be taken back (LiveLoop mixes this in; it needs the loop's store, state, config and
`maybe_update`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tui_align.errors import WriteFailed
from tui_align.rounds import Round


@dataclass
class Judgment:
    """One stored judgment, so that it can be taken back: which rows, and the round they judged."""

    round: Round
    kind: str  # preference | rating | demonstration
    ids: list[int] = field(default_factory=list)
    slot: int | None = None  # the rated slot, for a rating


class Judging:
    def pick(self, round_: Round, slot: int) -> None:
        """The reply in `slot` beats every other one."""
        with self.store.storing("the pick"):
            judgment = self.store.record_preference(round_.turn_id, round_.response_at(slot), round_.others(slot),
                                                    shown_order=round_.shown)
            self._vote(round_, judgment, picked=slot)
        round_.ranking = [slot] + [s for s in range(round_.n) if s != slot]
        self._judged(Judgment(round_, "preference", [judgment]), complete=True)

    def rank(self, round_: Round, slot: int) -> bool:
        """The next best slot of a ranking of N > 2; stored (and True) once the ranking is complete."""
        if not round_.add_rank(slot):
            return False
        try:
            with self.store.storing("the ranking"):
                ids = [self.store.record_preference(round_.turn_id, round_.response_at(better),
                                                    [round_.response_at(s) for s in round_.ranking[i + 1:]],
                                                    shown_order=round_.shown)
                       for i, better in enumerate(round_.ranking[:-1])]
                self._vote(round_, ids[0], picked=round_.ranking[0])  # the best reply's version wins
        except WriteFailed:
            del round_.ranking[-2:]  # back to before this key: the last rank and the implied one
            raise
        self._judged(Judgment(round_, "preference", ids), complete=True)
        return True

    def outcome(self, round_: Round, kind: str) -> None:
        """tie, both_bad or skip: stored, never trained on. A tie continues with the left reply."""
        outcome = {"skip": "skipped"}.get(kind, kind)
        with self.store.storing(f"the {kind.replace('_', ' ')}"):
            judgment = self.store.record_preference(round_.turn_id, None, round_.shown, outcome=outcome,
                                                    shown_order=round_.shown)
            if kind == "tie":
                self.store.choose(round_.turn_id, round_.response_at(0))
            self._vote(round_, judgment, outcome)
        self._judged(Judgment(round_, "preference", [judgment]), complete=True)

    def _vote(self, round_: Round, judgment: int, outcome: str = "", picked: int | None = None) -> None:
        """An arena round's judgment (`outcome` tie, both_bad or skipped, or the slot `picked`) is also a vote
        between its two versions, each stood for by one of its replies (the picked one, else the first
        shown; as shown: a first). A pick is a win for its version."""
        if round_.versions is None:
            return
        shown = [round_.versions[c] for c in round_.shown_order]  # the version in each slot
        first = {}
        for at, version in enumerate(shown):
            first.setdefault(version, at)
        if picked is not None:
            first[shown[picked]] = picked
            outcome = "a" if picked == min(first.values()) else "b"
        slots = sorted(first.values())
        self.store.record_arena(round_.turn_id, judgment, [shown[s] for s in slots],
                                [round_.response_at(s) for s in slots], outcome)

    def rate(self, round_: Round, slot: int, score: int, scale: str = "1-5") -> bool:
        """Score one reply (a re-score replaces the earlier one); True once every reply has a score,
        when the best one continues the conversation. A KTO mark is a thumbs score: 1 desirable, 0 not."""
        before = dict(round_.scores)
        round_.scores[slot] = score if scale == "1-5" else (5 if score else 1)
        complete = len(round_.scores) == round_.n
        try:
            with self.store.storing("the score"):
                rating = self.store.record_rating(round_.response_at(slot), score, scale)
                if complete:
                    self.store.choose(round_.turn_id, round_.response_at(round_.best_scored()))
        except WriteFailed:
            round_.scores = before
            raise
        self._judged(Judgment(round_, "rating", [rating], slot=slot), complete=complete)
        return complete

    def edit(self, round_: Round, slot: int, text: str) -> None:
        """The person's correction of the reply in `slot`: a demonstration, preferred over every reply the model gave."""
        with self.store.storing("the edit"):
            demo = self.store.record_demonstration(round_.turn_id, text, edited_from=round_.response_at(slot))
        self._judged(Judgment(round_, "demonstration", [demo]), complete=True)

    def _judged(self, judgment: Judgment, complete: bool) -> None:
        judgment.round.complete = complete
        self.last.append(judgment)
        votes = self.state.votes + (judgment.round.versions is not None and judgment.kind == "preference")
        self._set(pending=self.store.pending_count(self.config.method), votes=votes)
        if complete or self.config.method != "grpo":  # a GRPO group trains once all its candidates are scored
            self.maybe_update()

    def take_back(self) -> Judgment | None:
        """Withdraw this run's last judgment: never trained on from now (if an update already used it,
        it is left out of every later one). Its round is open again; None if there is nothing to take back."""
        if not self.last:
            return None
        judgment = self.last[-1]
        withdraw = {"preference": self.store.withdraw_judgment, "rating": self.store.withdraw_rating,
                    "demonstration": self.store.withdraw_demonstration}[judgment.kind]
        with self.store.storing("the take-back"):
            for pk in judgment.ids:
                withdraw(pk)
            if judgment.kind == "rating":
                self.store.choose(judgment.round.turn_id, None)  # a complete round had continued with its best reply
        self.last.pop()
        round_ = judgment.round
        round_.complete = False
        round_.ranking = []
        if judgment.kind == "rating":
            round_.scores.pop(judgment.slot, None)
        self._set(pending=self.store.pending_count(self.config.method))
        return judgment
