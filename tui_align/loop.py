"""LiveLoop: the live policy, once. `chat-train` shows it; `simulate` puts a judge in the person's chair.

It knows no Textual. It records every judgment through the SessionStore (tui_align/judging.py:
committed before the call returns, so a view may say "stored" right after), decides when to update
and on exactly which rows, sends the update and records the version (tui_align/updating.py: a
bounded window, whatever the session holds, trained beside the rounds), rolls back
(tui_align/guarding.py: also on its own, when the guard sends a version back), restarts a dead
engine, and reports every change of its state to whoever listens (`on_state`, `on_notice`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tui_align import DEFAULT_SYSTEM_PROMPT
from tui_align.arena import opponent as arena_opponent
from tui_align.client import EngineClient, EngineDied, EngineError, describe, last_error
from tui_align.errors import WriteFailed
from tui_align.feedback import PENDING_CAP
from tui_align.guarding import Guarding
from tui_align.judging import Judging, Judgment
from tui_align.rounds import Round
from tui_align.updating import Updating


@dataclass
class LoopConfig:
    """The live loop's policy. chat-train's and simulate's flags default to these fields; the
    training hyperparameters of an update are the engine's (engine.protocol.LIVE_TRAINING),
    overridden per session (SessionStore.overrides)."""

    method: str = "dpo"
    candidates: int = 4  # replies per round, sampled as one batch; a pick of the best stores 3 pairs
    update_every: int = 6  # new training rows that start an update: two picks of the best of 4
    # Rounds since the last update after which fewer new rows train too: ties and a rare edit leave a
    # sparse signal that would otherwise wait for rows that do not come. 0: only update_every.
    update_after: int = 4
    # Rows per update: the newest pending ones, topped up with the most recently trained (at twice
    # update_every, each row trains in two updates; in one, a rare edited feature was taught far less).
    window: int = 12
    # More rows per update, sampled from all older trained ones. 12 gave the same 35-cell mean (80.8%): listed +15
    # points, on_topic -8 (bench/RESULTS.md, "replaying older picks", issue 12).
    replay: int = 0
    # More rows per update: each of the N newest edits over the reply it corrects, so a feature only edits show
    # keeps being taught. 4 lifted the edited judges from 74.9% to 81.2% over seeds 0-9 (bench/RESULTS.md, "the
    # newest edits", issue 12); one pair an edit, not one per reply of its turn: 18-30% fewer tokens trained.
    replay_edits: int = 4
    max_new_tokens: int = 96  # room to finish a fuller reply (cut-off pairs teach only length)
    temperature: float = 0.8  # 0.6 won as often but cost an edited feature 14 points (bench/RESULTS.md, issue 12)
    top_p: float = 0.95
    system: str | None = DEFAULT_SYSTEM_PROMPT  # of new conversations; None: no system prompt
    seed: int | None = None  # shown order and sampling seeds; None: fresh each run
    arena_every: int = 5  # every K-th prompt is a blind arena round: the live version against an earlier one; 0: never

    @property
    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p}


@dataclass(frozen=True)
class LoopState:
    """What a view shows; a new object on every change."""

    engine: str = "loading"  # loading | ready | error | stopping
    generating: bool = False
    updating: bool = False
    version: int = 0
    pending: int = 0  # training rows waiting for an update
    update_every: int = LoopConfig.update_every
    window: int = LoopConfig.window
    note: str = ""
    model: str = ""
    device: str = ""
    last_update: float | None = None  # when the last update finished (time.time())
    last_seconds: float | None = None  # how long it took
    votes: int = 0  # arena votes stored in this run (a view of the leaderboard refreshes on it)

    @property
    def activity(self) -> str:
        """One word for the status bar: loading, error, stopping, generating, training or idle."""
        if self.engine != "ready":
            return self.engine
        return "generating" if self.generating else "training" if self.updating else "idle"

    @property
    def backlog(self) -> int:
        """Pending rows beyond one update's window (worked through, `window` at a time)."""
        return max(0, self.pending - self.window)


class LiveLoop(Judging, Guarding, Updating):
    def __init__(self, store, client: EngineClient, config: LoopConfig,
                 on_state: Callable[[LoopState], None] | None = None,
                 on_notice: Callable[[str, str], None] | None = None):
        self.store, self.client, self.config = store, client, config
        self.on_state = on_state or (lambda state: None)
        self.on_notice = on_notice or (lambda text, severity: None)
        self.rng = random.Random(config.seed)
        self.state = LoopState(version=store.active_version(), pending=store.pending_count(config.method),
                               update_every=config.update_every, window=config.window)
        self.last: list[Judgment] = []  # this run's judgments, newest last (take_back pops one)
        self.prompts = 0  # prompts asked in this run: every arena_every-th is an arena round
        # Updates come at the person's pace: after rows newer than the last update's window. A backlog
        # adds no versions of its own (each is a 19 MB adapter on the default model); it fills windows.
        self.trained_upto = 0  # the newest example id of the last successful update's window
        self.rounds_since_update = 0  # rounds generated since the last update started (update_after)
        self.fallback: int | None = None  # the newest intact version, offered when the live one is damaged
        self.start_guarding(config.seed)
        self._update_task: asyncio.Task | None = None
        self._update_id: int | None = None
        self._tasks: set[asyncio.Task] = set()

    # State ------------------------------------------------------------------------------

    def _set(self, **changes) -> None:
        self.state = replace(self.state, **changes)
        self.on_state(self.state)

    @property
    def ready(self) -> bool:
        return self.state.engine == "ready"

    @property
    def updating(self) -> bool:
        return self._update_task is not None and not self._update_task.done()

    def _record(self, what: str, write: Callable[[], object]) -> bool:
        """A write the loop makes on its own (an update's bookkeeping, a version): if it fails, the person
        is told what was not stored and the loop goes on. False if it failed."""
        try:
            with self.store.storing(what):
                write()
        except WriteFailed as exc:
            self.on_notice(f"{exc}\nFree some disk space; what you do next is stored as usual.", "error")
            return False
        return True

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # The engine's life ------------------------------------------------------------------

    async def start(self, restart: bool = False) -> bool:
        """Start (or restart) the engine at the session's live version; False if it failed (and said why)."""
        start_at = self.store.active_version()  # a rollback survives a restart
        if restart and self.fallback is not None:  # the person took the offer of the newest intact version
            start_at, self.fallback = self.fallback, None
            self._record(f"the move to v{start_at}", lambda: self.store.set_active_version(start_at))
            self.store.log("warning", f"started at v{start_at}, the newest intact version")
        from engine import versions as vs  # the version check reads file headers, no torch
        from engine.models import LoRAConfig

        found = start_at and vs.problem(vs.version_dir(self.store.versions_dir, start_at), LoRAConfig.r)
        if found:  # the engine would refuse it: say so now, and offer the newest version that loads
            self.fallback = vs.newest_intact(self.store.versions_dir, LoRAConfig.r)
            self._failed(f"v{start_at} of this session cannot be loaded: {found}",
                         f"Press ctrl+r to start at v{self.fallback}, the newest intact version.",
                         note=f"v{start_at} is damaged: ctrl+r starts at v{self.fallback}, the newest intact version")
            return False
        self._set(engine="loading", generating=False, note="restarting the engine…" if restart else "loading the model…")
        self.client.start_version = start_at
        try:
            info = await (self.client.restart() if restart else self.client.start())
        except (EngineDied, EngineError, OSError) as exc:
            self._failed(f"the engine did not start: {describe(exc)}")
            return False
        version = self.client.version
        if version > self.store.latest_version():  # written by an update we did not see finish
            self._record(f"version {version}", lambda: self.store.record_version(version, self.store.versions_dir / f"v{version:04d}"))
        model = Path(str(info.get("model", ""))).name or "model"
        self.store.log("info", f"engine ready: {model} on {info.get('device')} at v{version}")
        self._set(engine="ready", version=version, model=model, device=str(info.get("device", "")), note="",
                  pending=self.store.pending_count(self.config.method))
        if self.state.backlog:
            self.on_notice(f"{self.state.pending}{'+' if self.state.pending >= PENDING_CAP else ''} training rows "
                           f"are waiting: each live update takes your newest rows, then fills its {self.config.window}"
                           f" with them while you go on; `tui-align replay {self.store.name}` trains on all of them "
                           "in batch", "information")
        self.maybe_update()
        return True

    def check_engine(self) -> None:
        """Notice a death even when no request is in flight (views call it every second or so)."""
        if self.state.engine == "ready" and not self.client.alive:
            self._died()

    def _died(self, exc: EngineDied | None = None) -> None:
        if self.state.engine in ("error", "stopping", "loading"):  # already said, the exit we asked for, or old news
            return
        code = getattr(exc, "returncode", None) if exc else self.client.returncode
        if self._update_id is not None:
            update_id, self._update_id = self._update_id, None
            self._record("the failed update", lambda: self.store.finish_update(update_id, "failed", error="engine died"))
        error = last_error(getattr(exc, "stderr_tail", "") or self.client.stderr_tail or "")
        self._failed(f"the engine died (exit {code}){': ' + error if error else ''}")

    def _failed(self, message: str, offer: str = "Press ctrl+r to restart it at the last saved version.",
                note: str = "ctrl+r restarts it at the last saved version") -> None:
        self.store.log("error", message)
        self._set(engine="error", generating=False, updating=False, note=note)
        self.on_notice(f"{message}\n{offer}", "error")

    async def close(self) -> None:
        """Stop a running update (recorded as cancelled) and the engine; everything the person did is
        already stored. Safe to call twice."""
        if self.state.engine != "stopping":
            self._set(engine="stopping", note="stopping the engine…")
        tasks = [task for task in self._tasks if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.client.shutdown(), timeout=5)
        except Exception:  # noqa: BLE001 - a dead or stuck engine must not keep us here
            pass
        await self.client.close()

    # Rounds -----------------------------------------------------------------------------

    def begin(self, conversation_id: int, text: str) -> Round:
        """Store the person's message and open a round on it."""
        with self.store.storing("your message"):
            turn_id = self.store.add_user_turn(conversation_id, text)
        self.prompts += 1
        cfg = self.config
        arena = cfg.method == "dpo" and cfg.arena_every > 0 and self.prompts % cfg.arena_every == 0
        return self.round_for(turn_id, arena=arena)

    def round_for(self, turn_id: int, arena: bool = False) -> Round:
        """A new round on a stored turn (a first try, a regenerate, or a retry after an engine death). An
        arena round pits the live version against the earlier one a vote tells most about, half the round's
        replies each, shown blind and in random order: as many as any round, so it looks like one, and its
        pick trains as many pairs."""
        live = self.client.version
        rival = arena_opponent(live, self.store.version_numbers(), self.store.arena_votes()) if arena else None
        if rival is None:
            return Round.start(turn_id, self.store.prompt(turn_id), self.config.candidates, self.rng, version=live)
        n = max(self.config.candidates, 2)  # a vote needs a reply from each version
        return Round.start(turn_id, self.store.prompt(turn_id), n, self.rng, version=live,
                           versions=[rival if i % 2 else live for i in range(n)])

    async def generate(self, round_: Round, on_token: Callable[[int, str], None] | None = None) -> Round:
        """Stream the round's candidates (on_token(slot, text)), then store them. Raises EngineDied or
        EngineError after reporting it."""
        cfg = self.config
        await self._stop_check()
        seed = self.rng.randrange(2**31)
        self.rounds_since_update += 1
        if round_.versions is None:
            self.recent_prompts = [p for p in self.recent_prompts if p != round_.prompt][-3:] + [round_.prompt]
        self._set(generating=True)
        # One request for the round's candidates, or one per version in an arena round, each with its own
        # seed: two close versions sampled with one seed often give the same reply, a judgment wasted.
        versions = round_.versions or [None] * round_.n
        requests = [(v, [i for i, w in enumerate(versions) if w == v]) for v in dict.fromkeys(versions)]
        results: list[dict] = [{}] * round_.n
        try:
            for number, (version, candidates) in enumerate(requests):
                async for event in self.client.generate(round_.prompt, n=len(candidates), seed=seed + number,
                                                        version=version, **cfg.sampling):
                    if event["type"] == "token":
                        candidate = candidates[event["candidate"]]
                        round_.texts[candidate] += event["text"]
                        if on_token is not None:
                            on_token(round_.slot_of(candidate), event["text"])
                    elif event["type"] == "done":
                        for candidate, result in zip(candidates, event["candidates"]):
                            results[candidate] = result
                        if version is None:  # an update may have landed meanwhile
                            round_.version = event.get("version", round_.version)
            round_.results = results
        except EngineDied as exc:
            self._died(exc)
            raise
        except EngineError as exc:
            self.store.log("error", f"generation failed: {exc}")
            raise
        finally:
            if self.state.generating:
                self._set(generating=False)
        with self.store.storing("the replies"):
            round_.response_ids = self.store.add_responses(round_.turn_id, round_.results,
                                                           round_.versions or round_.version,
                                                           {**cfg.sampling, "seed": seed}, shown_order=round_.shown_order)
        for version, result in zip(round_.versions or [round_.version] * round_.n, round_.results):
            self.guard.observe(version, result, round_.prompt[-1]["content"])
        if cfg.method == "dpo" and round_.n >= 2:
            self._spawn(self._score_reference(round_))
        if not self.updating:  # an update checks it before it trains
            await self._keep_healthy()
        return round_

    async def _score_reference(self, round_: Round) -> None:
        """Reference log-probs while the person reads: the engine caches them for the update."""
        texts = [r["text"] for r in round_.results]
        examples = [{"prompt": round_.prompt, "chosen": [_assistant(texts[i])],
                     "rejected": [_assistant(texts[(i + 1) % round_.n])]} for i in range(0, round_.n, 2)]
        try:
            await self.client.score_reference(examples)
        except (EngineDied, EngineError):
            pass  # not needed: the update computes what is missing; a death is noticed elsewhere


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
