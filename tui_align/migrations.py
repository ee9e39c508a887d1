"""Numbered schema migrations of session.db (`sqlite_utils.migrations.Migrations`).

Each migration runs in a transaction together with the record of it having been applied,
so an interrupted upgrade leaves the old schema intact. The schema version of a database
is the number of migrations of this set applied to it; `session.schema_version` mirrors it
for people reading the file with other tools. Never edit a released migration: add one.

Tables (one row per thing a person did or the engine produced):
  session        the one row: model, method, hyperparameters (training overrides sent with
                 every live update), metadata (what made the session, e.g. simulate's run),
                 created, active_version (the live one: set by every finished update and rollback)
  conversations  one per dialogue; `system` is its optional system prompt
  turns          user messages; `parent_id` is the response they answer (NULL: the first),
                 so a conversation is a tree, OpenAssistant-style
  responses      assistant candidates under a turn; `chosen` marks the one that continues
                 the conversation, the others stay as its siblings
  ratings        a score for one response on a scale: thumbs (0/1), 1-5 or numeric
  preferences    one row per (chosen, rejected) pair with its outcome and the shown order;
                 rows of one judgment (a ranking of N>2) share `judgment_id`
  demonstrations a reply the person wrote or edited (kept as a response too)
  examples       one training row per method, made when the feedback is stored (a pair, a
                 demonstration or picked reply, a reward, a KTO label, a reply's 1-5 score in its turn's
                 GRPO group); `update_id` is the update that consumed it (NULL: pending); `withdrawn`
                 rows are never trained on again
  updates        one live or batch update: the examples it trained on, metrics, version, status
  (ratings, preferences and demonstrations carry `withdrawn`: taken back, or replaced by a re-score)
  versions       adapter versions written by the engine under versions/vNNNN
  arena          blind votes between two versions' replies (a: shown first): a, b, tie, both_bad
  events         the log of notifications and errors
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("tui-align-session")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db["session"].create({
        "id": int, "model": str, "method": str, "hyperparameters": str, "created": float,
        "tool_version": str, "schema_version": int,
    }, pk="id")
    db["conversations"].create({"id": int, "created": float}, pk="id")
    db["turns"].create({
        "id": int, "conversation_id": int, "parent_id": int, "text": str, "created": float,
    }, pk="id", foreign_keys=[("conversation_id", "conversations", "id")])
    db["responses"].create({
        "id": int, "turn_id": int, "text": str, "source": str, "version": int, "sampling": str,
        "tokens": int, "finish_reason": str, "ttft_s": float, "tokens_per_s": float,
        "shown_position": int, "chosen": int, "created": float,
    }, pk="id", foreign_keys=[("turn_id", "turns", "id")], defaults={"chosen": 0, "source": "model"})
    db["ratings"].create({
        "id": int, "response_id": int, "score": float, "scale": str, "created": float,
    }, pk="id", foreign_keys=[("response_id", "responses", "id")])
    db["preferences"].create({
        "id": int, "judgment_id": int, "turn_id": int, "chosen_id": int, "rejected_id": int,
        "outcome": str, "origin": str, "shown_order": str, "created": float,
    }, pk="id", foreign_keys=[("turn_id", "turns", "id")])
    db["demonstrations"].create({
        "id": int, "turn_id": int, "response_id": int, "edited_from": int, "text": str, "created": float,
    }, pk="id", foreign_keys=[("turn_id", "turns", "id")])
    db["updates"].create({
        "id": int, "method": str, "feedback_ids": str, "status": str, "version": int, "metrics": str,
        "error": str, "started": float, "finished": float,
    }, pk="id")
    db["versions"].create({"number": int, "path": str, "metrics": str, "created": float}, pk="number")
    db["turns"].create_index(["conversation_id"])
    db["responses"].create_index(["turn_id"])


@MIGRATIONS()
def m002_system_prompts_events_reference(db: Database) -> None:
    """Per-conversation system prompts, the event log, and cached reference log-probs."""
    db["conversations"].add_column("system", str)
    db["responses"].add_column("ref_logps", float)
    db["events"].create({"id": int, "time": float, "level": str, "message": str}, pk="id")



@MIGRATIONS()
def m003_active_version(db: Database) -> None:
    """The version the person left live (after an update or a rollback): where a restart resumes.
    NULL (sessions from before): the highest recorded version."""
    db["session"].add_column("active_version", int)


@MIGRATIONS()
def m004_examples_metadata_withdrawn(db: Database) -> None:
    """Training rows made once, at commit (pending ones found by index, not by rebuilding the
    session); session metadata apart from training overrides; withdrawn judgments; reference
    log-probs left to the engine, whose cache is keyed by what they depend on."""
    import json

    db["session"].add_column("metadata", str)
    for row in db["session"].rows:  # simulate kept its run in the overrides column: move it out
        overrides = json.loads(row["hyperparameters"] or "{}")
        meta = {k: overrides.pop(k) for k in ("simulate", "judge") if k in overrides}
        db["session"].update(row["id"], {"hyperparameters": json.dumps(overrides), "metadata": json.dumps(meta)})
    for table in ("preferences", "ratings", "demonstrations"):
        db[table].add_column("withdrawn", int, not_null_default=0)
    db["responses"].transform(drop={"ref_logps"})
    db["examples"].create({
        "id": int, "method": str, "source": str, "source_id": int, "turn_id": int, "response_id": int,
        "rejected_id": int, "score": float, "update_id": int, "withdrawn": int, "created": float,
    }, pk="id", defaults={"withdrawn": 0}, not_null={"withdrawn"})
    db["examples"].create_index(["method", "withdrawn", "update_id", "id"])  # pending, newest first
    db["examples"].create_index(["method", "withdrawn", "id"])  # recent and sampled trained rows
    db["examples"].create_index(["source", "source_id"])
    db["examples"].create_index(["turn_id"])
    db["preferences"].create_index(["turn_id"])
    db["ratings"].create_index(["response_id"])
    # Backfill, oldest first, with the rules of tui_align/feedback.py; map the old feedback ids
    # (dpo: preference id, sft: demonstration id or minus the pick's id, ppo: rating id).
    old_ids: dict[tuple[str, int], int] = {}
    rows = db.query("""select 'dpo' as method, 'preference' as source, p.id as source_id, p.turn_id, p.chosen_id as response_id,
                              p.rejected_id, null as score, p.created, p.id as old_id
                       from preferences p where p.outcome = 'chosen'
                       union all
                       select 'sft', 'demonstration', d.id, d.turn_id, d.response_id, null, null, d.created, d.id
                       from demonstrations d
                       union all
                       select 'sft', 'preference', p.id, p.turn_id, p.chosen_id, null, null, p.created, -p.id
                       from preferences p join responses c on c.id = p.chosen_id
                       where p.origin = 'pick' and p.outcome = 'chosen' and p.id = p.judgment_id and c.chosen = 1
                         and c.source = 'model'
                       union all
                       select 'ppo', 'rating', g.id, s.turn_id, g.response_id, null,
                              case g.scale when 'thumbs' then 2 * g.score - 1 when '1-5' then (g.score - 3) / 2.0
                                   else g.score end, g.created, g.id
                       from ratings g join responses s on s.id = g.response_id
                       order by created""")
    for row in rows:
        old = (row.pop("method"), row.pop("old_id"))
        old_ids[old] = db["examples"].insert({"method": old[0], **row}).last_pk
    for update in db["updates"].rows_where("status = 'done'", order_by="id"):
        ids = [old_ids[(update["method"], i)] for i in json.loads(update["feedback_ids"] or "[]")
               if (update["method"], i) in old_ids]
        if ids:
            db.execute(f"update examples set update_id = ? where update_id is null and id in ({','.join('?' * len(ids))})",
                       [update["id"], *ids])
        db["updates"].update(update["id"], {"feedback_ids": json.dumps(ids)})


@MIGRATIONS()
def m005_arena(db: Database) -> None:
    """Blind arena votes: two versions' replies to one prompt, shown in random order, and the outcome."""
    db["arena"].create({
        "id": int, "turn_id": int, "judgment_id": int, "version_a": int, "version_b": int,
        "response_a": int, "response_b": int, "outcome": str, "created": float,
    }, pk="id", foreign_keys=[("turn_id", "turns", "id")])
    db["arena"].create_index(["judgment_id"])


@MIGRATIONS()
def m006_kto_examples(db: Database) -> None:
    """KTO rows (tui_align/feedback.py): one per rating with a verdict, its label (1 or 0) in `score`;
    backfilled for earlier ratings, pending, withdrawn where the rating is."""
    db.execute("""insert into examples (method, source, source_id, turn_id, response_id, score, withdrawn, created)
                  select 'kto', 'rating', g.id, s.turn_id, g.response_id,
                         case when g.scale = '1-5' then g.score > 3 else g.score > 0 end, g.withdrawn, g.created
                  from ratings g join responses s on s.id = g.response_id
                  where not (g.scale = '1-5' and g.score = 3) order by g.id""")


@MIGRATIONS()
def m007_grpo_examples(db: Database) -> None:
    """GRPO rows (tui_align/feedback.py): one per 1-5 rating, the score as given; backfilled, oldest first,
    for the ratings of sessions from before GRPO (those that have none yet), pending, withdrawn where the
    rating is."""
    db.execute("""insert into examples (method, source, source_id, turn_id, response_id, score, withdrawn, created)
                  select 'grpo', 'rating', g.id, s.turn_id, g.response_id, g.score, g.withdrawn, g.created
                  from ratings g join responses s on s.id = g.response_id
                  where g.scale = '1-5' and not exists (select 1 from examples e where e.method = 'grpo'
                                                        and e.source = 'rating' and e.source_id = g.id)
                  order by g.id""")


SCHEMA_VERSION = len(MIGRATIONS._migrations)


def schema_version(db: Database) -> int:
    return len(MIGRATIONS.applied(db))


def unknown_migrations(db: Database) -> list[str]:
    """Migrations applied by a newer tui-align that this one does not know."""
    known = {m.name for m in MIGRATIONS._migrations}
    return [m.name for m in MIGRATIONS.applied(db) if m.name not in known]


def upgrade(db: Database) -> None:
    """Apply pending migrations, each in its own transaction, and record the version."""
    MIGRATIONS.apply(db)
    if db["session"].exists() and db["session"].count:
        db["session"].update(1, {"schema_version": schema_version(db)})
