"""When the live loop updates, on which rows, and what it records of an update (LiveLoop mixes this in; it
needs the loop's client, store, config, state and guard). An update runs as a task beside the rounds:
the engine pre-empts its steps for a waiting generate, so a person never waits for one."""

from __future__ import annotations

import asyncio
import time

from tui_align.client import EngineDied, EngineError, describe
from tui_align.errors import WriteFailed
from tui_align.feedback import grpo_groups


class Updating:
    @property
    def new_rows(self) -> int:
        """Untrained rows newer than the last update's window (a backlog is older, or it is the first)."""
        return self.store.pending_count(self.config.method, self.config.update_every, after=self.trained_upto)

    def maybe_update(self) -> None:
        """Start an update once `update_every` rows newer than the last update's window wait, or any
        such rows once `update_after` rounds have passed without an update."""
        if not self.ready or self.updating:
            return
        new, after = self.new_rows, self.config.update_after
        if new >= self.config.update_every or (new and after and self.rounds_since_update >= after):
            self._update_task = self._spawn(self.update())

    def train_now(self) -> str | None:
        """Start an update on whatever is pending; a reason when it cannot."""
        if self.updating:
            return "an update is already training"
        if not self.ready:
            return "the engine is not ready"
        if not self.state.pending:
            return f"no new {self.config.method} feedback to train on yet"
        self._update_task = self._spawn(self.update())
        return None

    async def wait_for_update(self) -> None:
        """Until the running update (and any it chained) has finished."""
        while self.updating:
            await asyncio.shield(self._update_task)

    async def wait_for_idle(self) -> None:
        """Until the updates and the check of the last new version have finished."""
        while running := [t for t in (self._update_task, self._check_task) if t is not None and not t.done()]:
            await asyncio.wait(running)

    async def update(self) -> dict | None:
        """One update on the window; its version is recorded before this returns. None if it failed."""
        method = self.config.method
        rows = self.store.update_window(method, self.config.window, self.config.replay, self.rng,
                                       self.config.replay_edits)
        if not rows or not self.ready:
            return None
        await self._stop_check()  # the person's new rows come first
        await self._keep_healthy()  # train from the parent, not from a version the guard sends back
        if not self.ready:  # the engine died meanwhile
            return None
        ids, examples = [i for i, _ in rows], [e for _, e in rows]
        self.rounds_since_update = 0
        if method == "grpo":
            examples = grpo_groups(examples)
            if not examples:  # no turn with two scores yet: nothing to compare
                return None
        try:
            with self.store.storing("the update's start (no update was started)"):
                update_id = self.store.start_update(method, ids)
        except WriteFailed as exc:
            self.on_notice(f"{exc}\nFree some disk space; `u` trains once it can be stored.", "error")
            return None
        self._update_id = update_id
        self._set(updating=True, note=f"training on {len(examples)} examples…")
        try:
            done = await self.client.update(method, examples, self.store.overrides or None,
                                            on_progress=self._progress)
        except EngineDied as exc:
            self._died(exc)
            return None
        except EngineError as exc:  # NaN/inf loss (discarded, previous version stays), out of memory, ...
            self._update_id, error = None, describe(exc)
            self._record("the failed update", lambda: self.store.finish_update(update_id, "failed", error=error))
            self.store.log("warning", f"update discarded: {error}")
            self._set(updating=False, note="")
            self.on_notice(f"update discarded, v{self.client.version} stays live: {error}", "warning")
            return None
        except asyncio.CancelledError:
            if self._update_id is not None:
                self._record("the cancelled update",
                             lambda: self.store.finish_update(update_id, "cancelled", error="stopped during the update"))
            self._update_id = None
            raise
        self._update_id = None
        self.trained_upto = max(self.trained_upto, *ids)  # rows judged meanwhile are newer: the next update
        version, metrics = done["version"], done.get("metrics", {})

        def record() -> None:
            self.store.finish_update(update_id, "done", version=version, metrics=metrics)
            self.store.record_version(version, self.store.versions_dir / f"v{version:04d}", metrics)

        self._record(f"version {version} (it is live in the engine; its rows stay pending)", record)
        self.store.log("info", f"update {update_id}: v{version} live after {done.get('seconds', 0):.1f} s "
                               f"on {len(examples)} examples")
        self._set(updating=False, version=version, note=f"v{version} is live", last_update=time.time(),
                  last_seconds=done.get("seconds"), pending=self.store.pending_count(method))
        loss = metrics.get("loss")
        self.on_notice(f"v{version} is live" + (f" (loss {loss:.3f})" if isinstance(loss, float) else ""), "update")
        self._update_task = None
        self.maybe_update()  # the rows judged while it trained
        if not self.updating:
            self._check_task = self._spawn(self._check(version))
        return done

    def _progress(self, event: dict) -> None:
        if event.get("step") is not None:
            self._set(note=f"training step {event['step']}…")
