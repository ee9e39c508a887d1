"""Updates and the versions they make: which examples an update trained on, how it ended, and
which adapter version is live (the adapters themselves are files the engine writes under versions/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class VersionRecords:
    """Mixed into SessionStore: needs `self.db` (an open sqlite_utils Database)."""

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
