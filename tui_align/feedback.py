"""Stored feedback as TRL-format training rows: what each method trains on, and what is pending.

Rules (`feedback`, `pending_feedback`, `tui-align sessions export`):
- dpo: every preference pair whose outcome is `chosen`. Pairs come from picks (the chosen
  reply over each rejected one), from edits (the edited reply over the original) and from
  ratings: two responses to the same prompt turn, rated on the same scale with different
  scores, yield a pair (higher over lower) when the second rating is recorded. Ties,
  both-bad and skipped judgments are kept but excluded from DPO.
- sft: every demonstration (a reply the person wrote or edited), as {prompt, completion},
  then every picked reply (the chosen response of a pick judgment that still continues its
  conversation), also as {prompt, completion}: fine-tuning on the accepted one of N samples
  is rejection sampling (best-of-n) fine-tuning. A pick's feedback id is minus its judgment
  id, so it never collides with a demonstration id.
- ppo: every rating, as {prompt, completion, score}; thumbs and 1-5 scores are mapped to
  [-1, 1] (thumbs 0 -> -1, 1 -> 1; 1-5 -> (score - 3) / 2), numeric scores are kept as is.
Feedback is consumed by an update that finished with status `done`; failed or cancelled
updates leave it pending.
"""

from __future__ import annotations

import json

from engine.protocol import UserError

METHODS = ("dpo", "sft", "ppo")
# SFT rows: demonstrations, then the first pick of each turn whose chosen reply still continues
# the conversation (a later pick of a ranking, or a reply replaced by an edit, is not one).
_SFT_ROWS = """select * from (select id, turn_id, text, created from demonstrations
               union all
               select -p.id as id, p.turn_id, c.text, p.created from preferences p join responses c on c.id = p.chosen_id
               where p.origin = 'pick' and p.outcome = 'chosen' and p.id = p.judgment_id and c.chosen = 1
                 and c.source = 'model')
               order by created, abs(id)"""


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _reward(score: float, scale: str) -> float:
    return {"thumbs": lambda s: 2 * s - 1, "1-5": lambda s: (s - 3) / 2}.get(scale, lambda s: s)(score)


class FeedbackQueries:
    """Mixed into SessionStore: needs `self.db` and `self.prompt(turn_id)`."""

    def feedback(self, method: str) -> list[tuple[int, dict]]:
        """(feedback id, TRL-format example) for all feedback usable by `method`, oldest first."""
        if method not in METHODS:
            raise UserError(f"method {method!r}: choose one of {', '.join(METHODS)}")
        if method == "dpo":
            rows = self.db.query(
                """select p.id, p.turn_id, c.text as chosen, r.text as rejected,
                          c.ref_logps as ref_c, r.ref_logps as ref_r
                   from preferences p join responses c on c.id = p.chosen_id join responses r on r.id = p.rejected_id
                   where p.outcome = 'chosen' order by p.id""")
            out = []
            for row in rows:
                example = {"prompt": self.prompt(row["turn_id"]), "chosen": _assistant(row["chosen"]),
                           "rejected": _assistant(row["rejected"])}
                if row["ref_c"] is not None and row["ref_r"] is not None:
                    example.update(ref_chosen_logps=row["ref_c"], ref_rejected_logps=row["ref_r"])
                out.append((row["id"], example))
            return out
        if method == "sft":
            return [(row["id"], {"prompt": self.prompt(row["turn_id"]), "completion": _assistant(row["text"])})
                    for row in self.db.query(_SFT_ROWS)]
        return [(row["id"], {"prompt": row["prompt"], "completion": _assistant(row["text"]),
                             "score": _reward(row["score"], row["scale"])}) for row in self.rated_responses()]

    def rated_responses(self) -> list[dict]:
        """Every rating with its prompt and reply: {id, prompt, text, score, scale}, oldest first."""
        rows = self.db.query("""select g.id, g.score, g.scale, s.turn_id, s.text from ratings g
                                join responses s on s.id = g.response_id order by g.id""")
        return [{**row, "prompt": self.prompt(row["turn_id"])} for row in rows]

    def consumed(self, method: str) -> set[int]:
        rows = self.db["updates"].rows_where("method = ? and status = 'done'", [method], select="feedback_ids")
        return {i for row in rows for i in json.loads(row["feedback_ids"] or "[]")}

    def pending_feedback(self, method: str) -> tuple[list[dict], list[int]]:
        """(examples, feedback ids) not yet consumed by a finished update of `method`."""
        used = self.consumed(method)
        pending = [(i, ex) for i, ex in self.feedback(method) if i not in used]
        return [ex for _, ex in pending], [i for i, _ in pending]

    def recent_feedback(self, method: str, limit: int) -> tuple[list[dict], list[int]]:
        """The last `limit` examples, consumed or not (a sliding window for live updates)."""
        recent = self.feedback(method)[-limit:]
        return [ex for _, ex in recent], [i for i, _ in recent]

    def pending_count(self, method: str) -> int:
        """len(pending_feedback(method)[1]), from ids alone (no prompt is rebuilt)."""
        if method not in METHODS:
            raise UserError(f"method {method!r}: choose one of {', '.join(METHODS)}")
        sql = {"dpo": "select id from preferences where outcome = 'chosen'",
               "sft": f"select id from ({_SFT_ROWS})",
               "ppo": "select g.id from ratings g join responses s on s.id = g.response_id"}[method]
        used = self.consumed(method)
        return sum(1 for (i,) in self.db.execute(sql).fetchall() if i not in used)
