"""SessionStore: every piece of feedback a person gives, committed to SQLite before we say so.

A session is a folder `<sessions_dir>/<name>/` holding `session.db` (this store) and
`versions/` (adapter versions written by the engine). The sessions dir is `./sessions`
unless `--sessions-dir` or $TUI_ALIGN_SESSIONS says otherwise.

Durability: WAL mode with synchronous=FULL; each method commits before it returns (one
transaction per user action). One process writes a session at a time: the writer holds an
exclusive `flock` on `session.lock` for the store's lifetime, and a second writer is
refused; readers (`readonly=True`) are always allowed.

SessionStore opens, locks and describes a session; its other methods are mixins, one concern each:
conversations and turns (tui_align/conversations.py), the person's feedback as it is given
(tui_align/feedback_writes.py) and as training rows (tui_align/feedback.py), updates and versions
(tui_align/version_records.py).
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
from tui_align.conversations import Conversations
from tui_align.errors import WriteFailed
from tui_align.feedback import FeedbackQueries
from tui_align.feedback_writes import FeedbackWrites
from tui_align.migrations import MIGRATIONS, SCHEMA_VERSION, schema_version, unknown_migrations, upgrade
from tui_align.version_records import VersionRecords

DB_FILE, LOCK_FILE = "session.db", "session.lock"


class SessionError(UserError):
    """A session that cannot be opened: missing, locked, corrupt, or from a newer tui-align."""


def sessions_dir(option: str | Path | None = None) -> Path:
    """--sessions-dir, else $TUI_ALIGN_SESSIONS, else ./sessions."""
    return Path(option or os.environ.get("TUI_ALIGN_SESSIONS") or "sessions")


def list_sessions(root: str | Path) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if (p / DB_FILE).exists()) if root.is_dir() else []


class SessionStore(Conversations, FeedbackWrites, FeedbackQueries, VersionRecords):
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

    # The session as a whole -------------------------------------------------------------

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
