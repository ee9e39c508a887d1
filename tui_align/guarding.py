"""Versions that stay live only while their replies stay healthy: the guard's verdicts (tui_align/guard.py)
turned into rollbacks, the check of each new version while the person reads, and the person's own
rollback (LiveLoop mixes this in; it needs the loop's client, store, guard, config and state)."""

from __future__ import annotations

import asyncio
import random

from tui_align.client import EngineDied, EngineError, describe
from tui_align.guard import EVIDENCE, ReplyGuard


class Guarding:
    def start_guarding(self, seed: int | None) -> None:
        self.guard = ReplyGuard()  # counts each version's candidates: a cut-off or repeating version goes back
        self.recent_prompts: list[list[dict]] = []  # the newest rounds' prompts, newest last: what a check samples
        self.check_rng = random.Random(None if seed is None else seed + 1)  # the rounds' seeds stay as they were
        self._check_task: asyncio.Task | None = None
        self._check_verdict = False  # a check giving its verdict (a rollback) is waited for; one sampling is cancelled
        self._healing = asyncio.Lock()  # one rollback at a time: the guard's (a round's or a check's) or the person's

    async def rollback(self) -> str:
        """Undo the last update (the previous version's weights, exactly); says what happened."""
        if self.updating or not self.ready:
            return "wait for the engine to be idle before rolling back"
        async with self._healing:
            current = self.client.version
            if current <= 0:
                return "already at v0, the base model"
            return await self._roll_back(current)

    async def _keep_healthy(self) -> None:
        """Roll the live version back to its parent once its candidates are plainly cut off or repeating
        more often than the baseline's (tui_align/guard.py)."""
        async with self._healing:
            current = self.client.version
            reason = self.guard.problem(current) if self.ready and current > 0 else None
            if reason is None:
                return
            said = await self._roll_back(current)
            if self.client.version != current:
                said += "; what you judge next trains from there"
        self.store.log("warning", f"{reason}: {said}")
        self.on_notice(f"{reason}: {said}", "warning")

    async def _check(self, version: int) -> None:
        """Sample a new version's replies to the person's latest prompts while they read, so that the guard
        can send it back before its own replies are shown (and the version trained after a person's last
        judgment is checked too). The person's next round cancels the sampling; what finished counts."""
        cfg = self.config
        try:
            for prompt in reversed(self.recent_prompts):
                base, health = self.guard.seen.get(self.guard.baseline), self.guard.seen.get(version)
                if (base is None or base.replies < EVIDENCE or self.client.version != version
                        or (health is not None and health.replies >= EVIDENCE)):
                    break  # no verdict possible, a stale version, or enough evidence
                if health is not None and any(asked == prompt[-1]["content"] for asked, _ in health.newest):
                    continue  # a prompt it has answered: another gives the guard its second prompt
                # at least 2 a prompt: with one candidate a round, 4 recent prompts would never make EVIDENCE
                async for event in self.client.generate(prompt, n=max(2, cfg.candidates), version=version,
                                                        seed=self.check_rng.randrange(2**31), **cfg.sampling):
                    if event["type"] == "done":
                        for result in event["candidates"]:
                            self.guard.observe(version, result, prompt[-1]["content"])
        except EngineDied as exc:
            self._died(exc)
            return
        except EngineError as exc:
            self.store.log("warning", f"the check of v{version} failed: {describe(exc)}")
            return
        if self.client.version == version and not self.updating and not self.state.generating:
            self._check_verdict = True  # (a round that is generating gives the verdict itself when done)
            try:
                await self._keep_healthy()
            finally:
                self._check_verdict = False

    async def leave(self) -> None:
        """Where a person who stops judging leaves the session: idle, and a check their last round cut short
        runs again, so the version they leave is one the guard has judged (a version that said nothing to its
        first 4 candidates was the final one, bench/RESULTS.md, issue 12)."""
        await self.wait_for_idle()
        if self.ready and self.client.version > 0:
            self._check_task = self._spawn(self._check(self.client.version))  # returns at once with enough evidence
            await asyncio.wait({self._check_task})

    async def _stop_check(self) -> None:
        """Cancel a check that is still sampling; wait for one that is giving its verdict (a rollback cut
        short would leave the client's version stale). A cancelled caller does not cancel the verdict."""
        task = self._check_task
        if task is None or task.done():
            return
        if not self._check_verdict:
            task.cancel()
        await asyncio.wait({task})

    async def _roll_back(self, current: int) -> str:
        try:
            versions = {v["version"]: v for v in await self.client.versions()}
            parent = versions.get(current, {}).get("parent")  # the version this update was trained from
            await self.client.rollback(current - 1 if parent is None else parent)
        except EngineDied as exc:
            self._died(exc)
            return "the engine died"
        except EngineError as exc:
            return f"rollback failed: {describe(exc)}"
        version = self.client.version
        stored = self._record(f"the rollback to v{version}", lambda: self.store.set_active_version(version))
        self.store.log("info", f"rolled back from v{current} to v{version}")
        self._set(version=version, note=f"rolled back to v{version}")
        return f"rolled back to v{version}" + ("" if stored else " (not recorded: the next start resumes where it was)")
