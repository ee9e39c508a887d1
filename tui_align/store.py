"""SessionStore: every piece of feedback a person gives, committed to SQLite before we say so.

A session is a folder `<sessions_dir>/<name>/` holding `session.db` (this store) and
`versions/` (adapter versions written by the engine). The sessions dir is `./sessions`
unless `--sessions-dir` or $TUI_ALIGN_SESSIONS says otherwise.

Durability: WAL mode with synchronous=FULL; each method commits before it returns (one
transaction per user action). One process writes a session at a time: the writer holds an
exclusive `flock` on `session.lock` for the store's lifetime, and a second writer is
refused; readers (`readonly=True`) are always allowed.

How feedback becomes training data is in tui_align/feedback.py (FeedbackQueries).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import time
from pathlib import Path

from sqlite_utils import Database

from engine.protocol import UserError
from tui_align import __version__
from tui_align.errors import WriteFailed
from tui_align.feedback import FeedbackQueries, desirable, reward
from tui_align.migrations import MIGRATIONS, SCHEMA_VERSION, schema_version, unknown_migrations, upgrade

OUTCOMES = ("chosen", "tie", "both_bad", "skipped")
SCALES = ("thumbs", "1-5", "numeric")
DB_FILE, LOCK_FILE = "session.db", "session.lock"


class SessionError(UserError):
    """A session that cannot be opened: missing, locked, corrupt, or from a newer tui-align."""


def sessions_dir(option: str | Path | None = None) -> Path:
    """--sessions-dir, else $TUI_ALIGN_SESSIONS, else ./sessions."""
    return Path(option or os.environ.get("TUI_ALIGN_SESSIONS") or "sessions")


def list_sessions(root: str | Path) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / DB_FILE).exists()) if root.is_dir() else []


class SessionStore(FeedbackQueries):
    def __init__(self, db: Database, folder: Path, lock_fd: int | None, readonly: bool):
        self.db, self.folder, self._lock_fd, self.readonly = db, folder, lock_fd, readonly

    # Opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, sessions_dir: str | Path, name: str, *, create: bool = True, readonly: bool = False,
             model: str | None = None, method: str = "dpo", hyperparameters: dict | None = None,
             metadata: dict | None = None) -> "SessionStore":
        """Open (or create) the session `name`; raises SessionError with a one-line reason.

        A writer upgrades an older schema in place (each migration in a transaction) and is
        refused while another process writes. A newer schema is refused. `model`, `method`,
        `hyperparameters` (training overrides every live update sends) and `metadata` (what
        made the session, never sent to the engine) are recorded only when it is created.
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
            raise SessionError(f"session name {name!r}: use letters, digits, '.', '_' and '-'")
        folder = Path(sessions_dir) / name
        path = folder / DB_FILE
        if not path.exists() and (readonly or not create):
            raise SessionError(f"no session {name!r} in {sessions_dir} (no {path})")
        lock_fd = None
        try:
            if readonly:
                db = cls._connect(path, readonly=True)
                if MIGRATIONS.pending(db) and not unknown_migrations(db):
                    db.close()  # an older schema: upgrade it once, as a writer would
                    cls.open(sessions_dir, name, create=False).close()
                    db = cls._connect(path, readonly=True)
                cls._check(db, path)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                lock_fd = cls._lock(folder, name)
                db = cls._connect(path, readonly=False)
                cls._check(db, path)
                upgrade(db)
                if not db["session"].count:
                    db["session"].insert({
                        "id": 1, "model": model, "method": method, "hyperparameters": json.dumps(hyperparameters or {}),
                        "metadata": json.dumps(metadata or {}), "created": time.time(), "tool_version": __version__, "schema_version": SCHEMA_VERSION,
                    })
                (folder / "versions").mkdir(exist_ok=True)
        except sqlite3.DatabaseError as exc:
            cls._unlock(lock_fd)
            raise SessionError(f"{path}: not a readable SQLite database ({exc})") from None
        except BaseException:
            cls._unlock(lock_fd)
            raise
        return cls(db, folder, lock_fd, readonly)

    @staticmethod
    def _connect(path: Path, readonly: bool) -> Database:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        db = Database(conn)
        db.execute("select count(*) from sqlite_master").fetchone()  # a corrupt file fails here
        if not readonly:
            db.enable_wal()
            db.execute("PRAGMA synchronous=FULL")
        return db

    @staticmethod
    def _check(db: Database, path: Path) -> None:
        tables = set(db.table_names())
        if tables and not MIGRATIONS.applied(db):
            raise SessionError(f"{path}: not a tui-align session database (tables: {', '.join(sorted(tables))})")
        if not tables:
            return
        newer = unknown_migrations(db)
        if newer:
            raise SessionError(f"{path}: written by a newer tui-align (schema {schema_version(db)}, this one "
                               f"knows up to {SCHEMA_VERSION}; unknown migration {newer[0]}): upgrade tui-align")

    @staticmethod
    def _lock(folder: Path, name: str) -> int:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SessionError(f"session {name!r} is open for writing in another process (pid {holder}); "
                               "close it there first (reading it is fine)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return fd

    @staticmethod
    def _unlock(fd: int | None) -> None:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def close(self) -> None:
        self.db.close()
        self._unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def storing(self, what: str):
        """One action's writes as one transaction; if it fails, nothing of it is stored and WriteFailed
        says what could not be stored, and why."""
        try:
            with self.db.atomic():
                yield
        except (sqlite3.Error, OSError) as exc:
            raise WriteFailed(f"could not store {what}: {exc}") from None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def versions_dir(self) -> Path:
        return self.folder / "versions"

    @property
    def meta(self) -> dict:
        """model, method, hyperparameters (dict), metadata (dict), created, tool_version, schema_version, name."""
        row = self.db["session"].get(1)
        return {**row, "hyperparameters": json.loads(row["hyperparameters"] or "{}"),
                "metadata": json.loads(row["metadata"] or "{}"), "name": self.name}

    def set_model(self, model: str | None) -> None:
        """Record another model for a session that holds no version yet (a bad one must not stick)."""
        self.db["session"].update(1, {"model": model})

    @property
    def overrides(self) -> dict:
        """Training hyperparameters this session sends with every live update (on top of the engine's defaults)."""
        return self.meta["hyperparameters"]

    # Conversations ----------------------------------------------------------------------

    def new_conversation(self, system: str | None = None) -> int:
        return self.db["conversations"].insert({"created": time.time(), "system": system}).last_pk

    def latest_conversation(self) -> int | None:
        row = self.db.execute("select max(id) from conversations").fetchone()
        return row[0]

    def add_user_turn(self, conversation_id: int, text: str, parent_id: int | None = None) -> int:
        """A user message; `parent_id` is the response it answers (default: the end of the chosen path).

        If the chosen path ends in a turn nobody chose a reply for, the new turn becomes its
        sibling (the person asked again instead).
        """
        if parent_id is None:
            path = self._chosen_path(conversation_id)
            if path:
                turn, response = path[-1]
                parent_id = response["id"] if response else turn["parent_id"]
        return self.db["turns"].insert({
            "conversation_id": conversation_id, "parent_id": parent_id, "text": text, "created": time.time(),
        }).last_pk

    def add_responses(self, turn_id: int, candidates: list[dict], version: int | list[int] | None, sampling: dict,
                      shown_order: list[int] | None = None, source: str = "model") -> list[int]:
        """Store the engine's candidates (its `done` payload) under a turn; returns their ids.

        `version`: the adapter version that produced them, or one per candidate (an arena round).
        `shown_order` lists candidate indices as shown, left to right (or top to bottom):
        [1, 0] means candidate 1 was shown first.
        """
        order = shown_order or list(range(len(candidates)))
        versions = version if isinstance(version, list) else [version] * len(candidates)
        now, ids = time.time(), []
        with self.db.atomic():
            for i, c in enumerate(candidates):
                ids.append(self.db["responses"].insert({
                    "turn_id": turn_id, "text": c["text"], "source": source, "version": versions[i],
                    "sampling": json.dumps(sampling), "tokens": c.get("tokens"), "finish_reason": c.get("finish_reason"),
                    "ttft_s": c.get("ttft_s"), "tokens_per_s": c.get("tokens_per_s"),
                    "shown_position": order.index(i) if i in order else None, "chosen": 0, "created": now,
                }).last_pk)
        return ids

    def choose(self, turn_id: int, response_id: int | None) -> None:
        """Mark the response that continues the conversation (its siblings stay in the tree; None: no
        reply continues it). A picked reply that no longer continues it stops being an SFT example."""
        self.db.execute("update responses set chosen = (id is ?) where turn_id = ?", [response_id, turn_id])
        self.db.execute("""update examples set withdrawn = 1 where turn_id = ? and method = 'sft'
                           and source = 'preference' and response_id is not ?""", [turn_id, response_id])

    def responses(self, turn_id: int) -> list[dict]:
        return list(self.db["responses"].rows_where("turn_id = ?", [turn_id], order_by="id"))

    def _chosen_path(self, conversation_id: int) -> list[tuple[dict, dict | None]]:
        """(turn, chosen response or None) from the first turn along chosen replies (latest sibling wins)."""
        path, parent = [], None
        while True:
            where = "conversation_id = ? and parent_id is ?"
            turns = list(self.db["turns"].rows_where(where, [conversation_id, parent], order_by="id desc", limit=1))
            if not turns:
                return path
            chosen = list(self.db["responses"].rows_where("turn_id = ? and chosen = 1", [turns[0]["id"]], limit=1))
            path.append((turns[0], chosen[0] if chosen else None))
            if not chosen:
                return path
            parent = chosen[0]["id"]

    def _system(self, conversation_id: int) -> list[dict]:
        system = self.db["conversations"].get(conversation_id)["system"]
        return [{"role": "system", "content": system}] if system is not None else []

    def history(self, conversation_id: int) -> list[dict]:
        """The conversation as {role, content} messages along the chosen path (the next prompt)."""
        messages = self._system(conversation_id)
        for turn, response in self._chosen_path(conversation_id):
            messages.append({"role": "user", "content": turn["text"]})
            if response:
                messages.append({"role": "assistant", "content": response["text"]})
        return messages

    def prompt(self, turn_id: int) -> list[dict]:
        """The messages that led to this turn, ending with its user message (system first)."""
        messages, turn = [], self.db["turns"].get(turn_id)
        conversation_id = turn["conversation_id"]
        while True:
            messages.append({"role": "user", "content": turn["text"]})
            if turn["parent_id"] is None:
                break
            response = self.db["responses"].get(turn["parent_id"])
            messages.append({"role": "assistant", "content": response["text"]})
            turn = self.db["turns"].get(response["turn_id"])
        return self._system(conversation_id) + messages[::-1]

    # Feedback ---------------------------------------------------------------------------
    # Each judgment commits its rows and, in the same transaction, the training examples it
    # makes (tui_align/feedback.py says which); nothing is rebuilt later.

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

    # Updates and versions ---------------------------------------------------------------

    def start_update(self, method: str, example_ids: list[int]) -> int:
        return self.db["updates"].insert({
            "method": method, "feedback_ids": json.dumps(list(example_ids)), "status": "running",
            "started": time.time(),
        }).last_pk

    def finish_update(self, update_id: int, status: str, version: int | None = None, metrics: dict | None = None,
                      error: str | None = None) -> None:
        """status: done (its pending examples are consumed; its version becomes the active one), failed or
        cancelled (nothing consumed)."""
        with self.db.atomic():
            self.db["updates"].update(update_id, {
                "status": status, "version": version, "metrics": json.dumps(metrics or {}, default=str),
                "error": error, "finished": time.time(),
            })
            if status == "done":
                ids = json.loads(self.db["updates"].get(update_id)["feedback_ids"] or "[]")
                for start in range(0, len(ids), 500):
                    chunk = ids[start:start + 500]
                    self.db.execute(f"update examples set update_id = ? where update_id is null "
                                    f"and id in ({','.join('?' * len(chunk))})", [update_id, *chunk])
                if version is not None:
                    self.set_active_version(version)

    def record_version(self, number: int, path: str | Path, metrics: dict | None = None) -> None:
        self.db["versions"].upsert({"number": number, "path": str(path), "metrics": json.dumps(metrics or {}, default=str),
                                    "created": time.time()}, pk="number")

    def set_active_version(self, number: int) -> None:
        """The version now live (a finished update's, or the one rolled back to)."""
        self.db["session"].update(1, {"active_version": number})

    def active_version(self) -> int:
        """Where the engine should resume: the live version when the session was last used."""
        active = self.db["session"].get(1).get("active_version")
        return self.latest_version() if active is None else active

    def version_numbers(self) -> list[int]:
        """0 (the base) and every recorded version."""
        return [0] + [n for (n,) in self.db.execute("select number from versions where number > 0 order by number")]

    def latest_version(self) -> int:
        return self.db.execute("select coalesce(max(number), 0) from versions").fetchone()[0]

    def metrics_history(self) -> list[dict]:
        """One dict per finished update: update, method, version, examples, seconds, then its metrics."""
        return [{"update": row["id"], "method": row["method"], "version": row["version"],
                 "examples": len(json.loads(row["feedback_ids"] or "[]")),
                 "seconds": (row["finished"] or 0) - row["started"], **json.loads(row["metrics"] or "{}")}
                for row in self.db["updates"].rows_where("status = 'done'", order_by="id")]

    def counts(self) -> dict:
        """prompts (user turns), pairs (trainable preference pairs), ratings, demos, updates (done); withdrawn
        feedback is not counted."""
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return {"prompts": one("select count(*) from turns"),
                "pairs": one("select count(*) from preferences where outcome = 'chosen' and withdrawn = 0"),
                "ratings": one("select count(*) from ratings where withdrawn = 0"),
                "demos": one("select count(*) from demonstrations where withdrawn = 0"),
                "updates": one("select count(*) from updates where status = 'done'")}

    def last_activity(self) -> float:
        tables = ("turns", "responses", "ratings", "preferences", "updates", "versions")
        sql = " union all ".join(f"select max(created) from {t}" if t != "updates" else "select max(started) from updates"
                                 for t in tables)
        return max([r[0] for r in self.db.execute(sql).fetchall() if r[0]] + [self.meta["created"]])

    def log(self, level: str, message: str) -> None:
        """Append to the event log (the TUI logs its notifications and errors here). Best effort: a log line
        that cannot be written (a full disk) is dropped, not raised in the middle of reporting something."""
        with contextlib.suppress(sqlite3.Error, OSError):
            self.db["events"].insert({"time": time.time(), "level": level, "message": message})
