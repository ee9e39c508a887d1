"""Numbered schema migrations of session.db (`sqlite_utils.migrations.Migrations`).

Each migration runs in a transaction together with the record of it having been applied,
so an interrupted upgrade leaves the old schema intact. The schema version of a database
is the number of migrations of this set applied to it; `session.schema_version` mirrors it
for people reading the file with other tools. Never edit a released migration: add one.

Tables (one row per thing a person did or the engine produced):
  session        the one row of metadata: model, method, hyperparameters, created, versions,
                 active_version (the live one: set by every finished update and rollback)
  conversations  one per dialogue; `system` is its optional system prompt
  turns          user messages; `parent_id` is the response they answer (NULL: the first),
                 so a conversation is a tree, OpenAssistant-style
  responses      assistant candidates under a turn; `chosen` marks the one that continues
                 the conversation, the others stay as its siblings
  ratings        a score for one response on a scale: thumbs (0/1), 1-5 or numeric
  preferences    one row per (chosen, rejected) pair with its outcome and the shown order;
                 rows of one judgment (a ranking of N>2) share `judgment_id`
  demonstrations a reply the person wrote or edited (kept as a response too)
  updates        one live or batch update: the feedback it consumed, metrics, version, status
  versions       adapter versions written by the engine under versions/vNNNN
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
