"""Stored feedback as TRL-format training rows: what each method trains on, and what is pending.

Every judgment makes its training rows when it is committed (the `examples` table), so
finding what is pending, or the window of a live update, is an indexed query with a LIMIT,
whatever the session holds. The rules (FeedbackWrites.record_*, tui_align/feedback_writes.py):
- dpo: every preference pair whose outcome is `chosen`. Pairs come from picks (the chosen
  reply over each rejected one), from edits (the edited reply over the original and over each
  other model reply of the turn) and from ratings: two responses to the same prompt turn,
  rated on the same scale with different scores, yield a pair (higher over lower) when the
  second rating is recorded. Ties,
  both-bad and skipped judgments are kept but excluded from DPO.
- sft: every demonstration (a reply the person wrote or edited), as {prompt, completion},
  and the first pick of each turn while its reply continues the conversation (a later pick
  of a ranking, or a reply replaced by an edit or a later pick, is not one): fine-tuning on
  the accepted one of N samples is rejection sampling (best-of-n) fine-tuning.
- ppo: every rating, as {prompt, completion, score}; thumbs and 1-5 scores are mapped to
  [-1, 1] (thumbs 0 -> -1, 1 -> 1; 1-5 -> (score - 3) / 2), numeric scores are kept as is.
  A re-score of the same reply replaces the earlier one.
- kto: every rating with a verdict, as TRL's unpaired {prompt, completion, label}: desirable
  (True) for thumbs up (`+`), 4-5 on the 1-5 scale and numeric scores > 0; undesirable for
  thumbs down (`-`), 1-2 and numeric <= 0; a 3 is neutral and makes no row. The label is
  kept in the example's `score` column (1 or 0).
- grpo: every 1-5 score, as {prompt, completion, score, turn_id}; the scored replies of one turn
  (its candidates, and those of its regenerations) are one group. `grpo_groups` turns them into
  the rows a `grpo` update and `sessions export --kind grpo` take: {prompt, completions, scores}.
  A live window always holds whole groups, and a turn with a single score is no group (nothing
  to compare it with) until a sibling is scored.
An example is consumed by the first update that finished with status `done` on it; failed
or cancelled updates leave it pending. Withdrawn examples (a judgment taken back) are never
trained on again.
"""

from __future__ import annotations

import random

from engine.protocol import METHODS, UserError

PENDING_CAP = 1000  # pending rows counted exactly; beyond it a view shows "1000+"
_EXAMPLES = """select e.id, e.turn_id, e.score, e.update_id, c.text as chosen, r.text as rejected
               from examples e join responses c on c.id = e.response_id left join responses r on r.id = e.rejected_id"""


def reward(score: float, scale: str) -> float:
    """A rating on its scale as a PPO reward in [-1, 1] (numeric scores as they are)."""
    return {"thumbs": lambda s: 2 * s - 1, "1-5": lambda s: (s - 3) / 2}.get(scale, lambda s: s)(score)


def desirable(score: float, scale: str) -> bool | None:
    """A rating's KTO label: True (desirable), False (undesirable) or None (a neutral 3 of 1-5)."""
    if scale == "1-5":
        return None if score == 3 else score > 3
    return score > 0  # thumbs: 1 up, 0 down; numeric: the sign


def _check(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"method {method!r}: choose one of {', '.join(METHODS)}")


class FeedbackQueries:
    """Mixed into SessionStore: needs `self.db` and `self.prompt(turn_id)`."""

    def feedback(self, method: str) -> list[tuple[int, dict]]:
        """(example id, TRL-format example) for all feedback usable by `method`, oldest first (export, replay)."""
        _check(method)
        rows = self.db.query(f"{_EXAMPLES} where e.method = ? and e.withdrawn = 0 order by e.id", [method])
        return self._build(method, list(rows))

    def scored_groups(self) -> tuple[list[dict], int]:
        """(the session's GRPO rows {prompt, completions, scores}, the turns with a single score: no group).
        The one definition of a session's groups: `sessions export --kind grpo` writes them and
        `replay --method grpo` trains on them."""
        examples = [ex for _, ex in self.feedback("grpo")]
        groups = grpo_groups(examples)
        return groups, len({ex["turn_id"] for ex in examples}) - len(groups)

    def pending_count(self, method: str, cap: int = PENDING_CAP, after: int = 0) -> int:
        """Examples of `method` no finished update has trained on (with an id above `after`), counted up to
        `cap` (an index range with a LIMIT: its cost does not grow with a backlog)."""
        _check(method)
        return self.db.execute("""select count(*) from (select 1 from examples where method = ? and withdrawn = 0
                                  and update_id is null and id > ? limit ?)""", [method, after, cap]).fetchone()[0]

    def update_window(self, method: str, window: int, replay: int = 0,
                      rng: random.Random | None = None, replay_edits: int = 0) -> list[tuple[int, dict]]:
        """The examples of one live update, oldest first: the newest `window` pending ones, topped up to
        `window` with the most recently trained ones, plus up to `replay` older trained ones sampled at
        random, plus the trained rows of the `replay_edits` newest edits (for dpo the edit over the reply it
        corrects, for sft the demonstration). Bounded by those counts, whatever the session holds."""
        _check(method)
        where = f"{_EXAMPLES} where e.method = ? and e.withdrawn = 0"
        rows = list(self.db.query(f"{where} and e.update_id is null order by e.id desc limit ?", [method, window]))
        if len(rows) < window:  # fewer pending than the window: the newest 2 * window rows hold enough trained ones
            recent = self.db.query(f"{where} order by e.id desc limit ?", [method, 2 * window])
            rows += [r for r in recent if r["update_id"] is not None][:window - len(rows)]
        if replay:
            rng = rng or random.Random()
            (top,) = self.db.execute("select max(id) from examples").fetchone()
            taken, wanted = {r["id"] for r in rows}, len(rows) + replay
            for _ in range(4 * replay):  # random probes into the trained rows: O(replay log n)
                if len(taken) >= wanted or not top:
                    break
                probe = self.db.query(f"{where} and e.update_id is not null and e.id <= ? order by e.id desc limit 1",
                                      [method, rng.randint(1, top)])
                for row in probe:
                    if row["id"] not in taken:
                        taken.add(row["id"])
                        rows.append(row)
        if replay_edits:  # the newest edits, by the demonstrations' primary key: one row each
            # Not the edit's pairs over the turn's other replies: the pair over the corrected reply differs only in
            # what the person changed, which is what the edit teaches, and it runs two replies where they run five.
            edits = self.db.execute("""select turn_id, response_id, edited_from from demonstrations where withdrawn = 0
                                       and edited_from is not null order by id desc limit ?""", [replay_edits]).fetchall()
            taken = {r["id"] for r in rows}
            for turn_id, response_id, edited_from in edits:
                rows += [r for r in self.db.query(f"{where} and e.update_id is not null and e.turn_id = ?"
                                                  " and e.response_id = ? and coalesce(e.rejected_id, ?) = ?",
                                                  [method, turn_id, response_id, edited_from, edited_from])
                         if r["id"] not in taken]
        if method == "grpo":  # whole groups: a window's turns bring every scored sibling (a few rows each)
            turns = sorted({r["turn_id"] for r in rows})
            taken = {r["id"] for r in rows}
            if turns:
                rows += [r for r in self.db.query(f"{where} and e.turn_id in ({','.join('?' * len(turns))})",
                                                  [method, *turns]) if r["id"] not in taken]
        return self._build(method, sorted(rows, key=lambda r: r["id"]))

    def _build(self, method: str, rows: list[dict]) -> list[tuple[int, dict]]:
        prompts: dict[int, list[dict]] = {}  # one walk up the conversation per turn
        out = []
        for row in rows:
            turn = row["turn_id"]
            if turn not in prompts:
                prompts[turn] = self.prompt(turn)
            example = {"prompt": prompts[turn]}
            if method == "dpo":
                example.update(chosen=_assistant(row["chosen"]), rejected=_assistant(row["rejected"]))
            else:
                example["completion"] = _assistant(row["chosen"])
            if method in ("ppo", "grpo"):
                example["score"] = row["score"]
            if method == "grpo":
                example["turn_id"] = turn
            elif method == "kto":
                example["label"] = bool(row["score"])
            out.append((row["id"], example))
        return out


def grpo_groups(examples: list[dict]) -> list[dict]:
    """Per-reply grpo examples as GRPO rows {prompt, completions, scores}, one per turn with at least 2
    scored replies, in the order of each turn's first example."""
    groups: dict[int, dict] = {}
    for example in examples:
        group = groups.setdefault(example["turn_id"], {"prompt": example["prompt"], "completions": [], "scores": []})
        group["completions"].append(example["completion"])
        group["scores"].append(example["score"])
    return [group for group in groups.values() if len(group["scores"]) >= 2]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]
