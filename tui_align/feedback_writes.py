"""The person's feedback, written: each judgment commits its rows and, in the same transaction, the
training examples it makes (tui_align/feedback.py says which); nothing is rebuilt later.
A judgment can be taken back (withdraw_*); the arena's blind votes between versions are here too.
"""

from __future__ import annotations

import json
import time

from engine.protocol import UserError
from tui_align.feedback import desirable, reward

OUTCOMES = ("chosen", "tie", "both_bad", "skipped")
SCALES = ("thumbs", "1-5", "numeric")


class FeedbackWrites:
    """Mixed into SessionStore: needs `self.db`, and `self.add_responses` and `self.choose`
    (tui_align/conversations.py) for the replies a judgment makes the continuation."""

    def record_preference(self, turn_id: int, chosen_id: int | None, rejected_ids: list[int],
                          outcome: str = "chosen", shown_order: list[int] | None = None, origin: str = "pick") -> int:
        """One judgment of a turn's candidates; returns its id (the judgment id).

        outcome `chosen`: `chosen_id` beats each of `rejected_ids` (one pair each). A pick
        makes it the continuation unless an earlier pick of this turn rejected it, so a
        ranking A > B > C stored as (A, [B, C]) then (B, [C]) continues with A. `tie`,
        `both_bad`, `skipped`: kept, never trained on by default; `chosen_id` may be None.
        `shown_order` is the response ids as shown, left first (default: as stored).
        """
        if outcome not in OUTCOMES:
            raise UserError(f"outcome {outcome!r}: choose one of {', '.join(OUTCOMES)}")
        if outcome == "chosen" and (chosen_id is None or not rejected_ids):
            raise UserError("a `chosen` preference needs a chosen and at least one rejected response")
        if shown_order is None:
            rows = self.db["responses"].rows_where("turn_id = ?", [turn_id], order_by="shown_position, id")
            shown_order = [r["id"] for r in rows]
        candidates = ([chosen_id] if chosen_id is not None else []) + list(rejected_ids)
        first, *others = candidates or [None]
        pairs = [(first, r) for r in others] or [(first, None)]
        now = time.time()
        beaten = self.db.execute("""select 1 from preferences where turn_id = ? and rejected_id = ?
                                    and outcome = 'chosen' and withdrawn = 0""", [turn_id, chosen_id]).fetchone()
        with self.db.atomic():
            judgment = None
            for chosen, rejected in pairs:
                pk = self.db["preferences"].insert({
                    "judgment_id": judgment, "turn_id": turn_id, "chosen_id": chosen, "rejected_id": rejected,
                    "outcome": outcome, "origin": origin, "shown_order": json.dumps(shown_order), "created": now,
                }).last_pk
                if judgment is None:
                    judgment = pk
                    self.db["preferences"].update(pk, {"judgment_id": pk})
                if outcome == "chosen":
                    self._add_example("dpo", "preference", pk, turn_id, chosen, rejected, now=now)
            if outcome == "chosen" and origin == "pick" and not beaten:
                self.choose(turn_id, chosen_id)
                if self.db["responses"].get(chosen_id)["source"] == "model":  # best-of-n: the pick is a demonstration
                    self._add_example("sft", "preference", judgment, turn_id, chosen_id, now=now)
        return judgment

    def record_rating(self, response_id: int, score: float, scale: str = "1-5") -> int:
        """Rate one response; a re-score replaces its earlier rating (and the pairs made from it).
        Pairs it with differently rated siblings (see tui_align/feedback.py)."""
        if scale not in SCALES:
            raise UserError(f"scale {scale!r}: choose one of {', '.join(SCALES)}")
        if (scale == "thumbs" and score not in (0, 1)) or (scale == "1-5" and not 1 <= score <= 5):
            raise UserError(f"score {score} is outside the {scale} scale")
        response = self.db["responses"].get(response_id)
        now = time.time()
        with self.db.atomic():
            for (earlier,) in self.db.execute("select id from ratings where response_id = ? and withdrawn = 0",
                                              [response_id]).fetchall():
                self.withdraw_rating(earlier)
            rating_id = self.db["ratings"].insert({
                "response_id": response_id, "score": score, "scale": scale, "created": now,
            }).last_pk
            self._add_example("ppo", "rating", rating_id, response["turn_id"], response_id,
                              score=reward(score, scale), now=now)
            label = desirable(score, scale)
            if label is not None:
                self._add_example("kto", "rating", rating_id, response["turn_id"], response_id, score=int(label), now=now)
            if scale == "1-5":  # one member of its turn's GRPO group, on the person's own scale
                self._add_example("grpo", "rating", rating_id, response["turn_id"], response_id, score=score, now=now)
            siblings = self.db.execute(
                """select r.response_id, r.score from ratings r join responses s on s.id = r.response_id
                   where s.turn_id = ? and r.scale = ? and r.response_id != ? and r.withdrawn = 0""",
                [response["turn_id"], scale, response_id]).fetchall()
            for other, other_score in siblings:
                if other_score != score:
                    better, worse = (response_id, other) if score > other_score else (other, response_id)
                    self.record_preference(response["turn_id"], better, [worse], origin="rating")
        return rating_id

    def record_demonstration(self, turn_id: int, text: str, edited_from: int | None = None) -> int:
        """A reply the person wrote (or edited from response `edited_from`); returns its id.

        It is stored as a response that continues the conversation, as an SFT example, and,
        when edited, as preference pairs: the edit over the original and over each other reply
        the model gave this turn (the person's own reply is the best they were shown; one
        correction then teaches as much as a pick of the best of N, not a single pair).
        """
        with self.db.atomic():
            others = [pk for (pk,) in self.db.execute(
                "select id from responses where turn_id = ? and source = 'model' and id != ? order by shown_position, id",
                [turn_id, edited_from]).fetchall()] if edited_from is not None else []
            (response_id,) = self.add_responses(turn_id, [{"text": text}], None, {}, source="demonstration")
            demo_id = self.db["demonstrations"].insert({
                "turn_id": turn_id, "response_id": response_id, "edited_from": edited_from, "text": text,
                "created": time.time(),
            }).last_pk
            self._add_example("sft", "demonstration", demo_id, turn_id, response_id)
            if edited_from is not None:
                self.record_preference(turn_id, response_id, [edited_from, *others], origin="edit")
            self.choose(turn_id, response_id)
        return demo_id

    def _add_example(self, method: str, source: str, source_id: int, turn_id: int, response_id: int,
                     rejected_id: int | None = None, score: float | None = None, now: float | None = None) -> int:
        return self.db["examples"].insert({
            "method": method, "source": source, "source_id": source_id, "turn_id": turn_id,
            "response_id": response_id, "rejected_id": rejected_id, "score": score, "created": now or time.time(),
        }).last_pk

    # Taking feedback back: the rows stay (nothing the person did is lost), marked withdrawn, and
    # their examples leave every later update: pending ones are simply never trained on.

    def withdraw_judgment(self, judgment_id: int) -> None:
        """A pick, ranking step, tie, both-bad or skip (every pair of it); its turn continues with no reply."""
        with self.db.atomic():
            rows = self.db.execute("select id, turn_id from preferences where judgment_id = ?", [judgment_id]).fetchall()
            self._withdraw("preference", [pk for pk, _ in rows])
            for turn_id in {turn for _, turn in rows}:
                self.db.execute("update responses set chosen = 0 where turn_id = ?", [turn_id])

    def withdraw_rating(self, rating_id: int) -> None:
        """A rating, its reward example and the pairs it made with its siblings' ratings."""
        with self.db.atomic():
            (response_id,) = self.db.execute("select response_id from ratings where id = ?", [rating_id]).fetchone()
            self._withdraw("rating", [rating_id])
            pairs = self.db.execute("""select id from preferences where origin = 'rating' and withdrawn = 0
                                       and ? in (chosen_id, rejected_id)""", [response_id]).fetchall()
            self._withdraw("preference", [pk for (pk,) in pairs])

    def withdraw_demonstration(self, demo_id: int) -> None:
        """An edit or a written reply, with its pairs over the model's replies; its turn continues with no reply."""
        with self.db.atomic():
            demo = self.db["demonstrations"].get(demo_id)
            self._withdraw("demonstration", [demo_id])
            pairs = self.db.execute("select id from preferences where origin = 'edit' and chosen_id = ?",
                                    [demo["response_id"]]).fetchall()
            self._withdraw("preference", [pk for (pk,) in pairs])
            self.db.execute("update responses set chosen = 0 where turn_id = ?", [demo["turn_id"]])

    def _withdraw(self, source: str, ids: list[int]) -> None:
        table = {"preference": "preferences", "rating": "ratings", "demonstration": "demonstrations"}[source]
        for pk in ids:
            self.db.execute(f"update {table} set withdrawn = 1 where id = ?", [pk])
            self.db.execute("update examples set withdrawn = 1 where source = ? and source_id = ?", [source, pk])

    # The arena --------------------------------------------------------------------------

    def record_arena(self, turn_id: int, judgment_id: int, versions: list[int], responses: list[int],
                     outcome: str) -> int:
        """A blind vote between two versions (as shown: first, second); outcome a, b, tie or both_bad."""
        if outcome not in ("a", "b", "tie", "both_bad", "skipped"):
            raise UserError(f"arena outcome {outcome!r}: choose a, b, tie, both_bad or skipped")
        return self.db["arena"].insert({
            "turn_id": turn_id, "judgment_id": judgment_id, "version_a": versions[0], "version_b": versions[1],
            "response_a": responses[0], "response_b": responses[1], "outcome": outcome, "created": time.time(),
        }).last_pk

    def arena_votes(self) -> list[tuple[int, int, float]]:
        """(version a, version b, score of a) of every vote in force, oldest first: ties and both-bad are
        half a win each; skipped and withdrawn votes are left out."""
        rows = self.db.execute("""select a.version_a, a.version_b, a.outcome from arena a
                                  join preferences p on p.id = a.judgment_id
                                  where p.withdrawn = 0 and a.outcome != 'skipped' order by a.id""").fetchall()
        return [(va, vb, {"a": 1.0, "b": 0.0}.get(outcome, 0.5)) for va, vb, outcome in rows]
