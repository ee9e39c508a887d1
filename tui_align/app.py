"""The Textual app of `tui-align chat-train`: owns the EngineClient and the SessionStore.

Everything heavy runs in the engine process; here every engine call is an async worker on
the event loop, so the screen never waits. The chat screen runs the rounds; this class runs
the engine's life (start, death, restart), the updates and the rollbacks, and the status bar.
Every person's action is committed to the store before the screen says it is stored.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding

from tui_align.client import EngineClient, EngineDied, EngineError
from tui_align.screens.chat import ChatScreen
from tui_align.screens.quit import QuitScreen
from tui_align.store import SessionStore

GC_EVERY = 5.0  # seconds between garbage collections at quiet moments
ENGINE_NICENESS = 10  # the engine's threads yield the CPU to the screen
UPDATE_WINDOW = 8  # an update trains on the pending feedback, topped up to the last 8 items (DESIGN.md)


@dataclass
class ChatConfig:
    model: str | None = None
    method: str = "dpo"
    candidates: int = 2
    update_every: int = 4
    device: str = "auto"
    max_new_tokens: int = 128
    temperature: float = 0.8
    seed: int | None = None
    system: str | None = None  # system prompt of new conversations


class ChatTrainApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tui-align"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [
        Binding("ctrl+q", "quit", "quit", show=False, priority=True),
        Binding("ctrl+r", "restart_engine", "restart engine", priority=True),
    ]

    def __init__(self, store: SessionStore, config: ChatConfig, start_engine: bool = True) -> None:
        super().__init__()
        self.store = store
        self.config = config
        self.start_engine_on_mount = start_engine  # False only for screen snapshots
        self.client = EngineClient(model=config.model, method=config.method, session_dir=store.folder,
                                   device=config.device, nice=ENGINE_NICENESS)
        self.engine_state = "loading"
        self.update_running = False
        self.quit_after_update = False
        self._update_id: int | None = None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restart_engine":  # only offered (and shown) once the engine has failed
            return self.engine_state == "error"
        return True

    # Start-up and the engine's life -------------------------------------------------------

    def get_default_screen(self) -> ChatScreen:
        self.chat = ChatScreen(self.store, self.config)
        return self.chat

    def on_mount(self) -> None:
        if self.start_engine_on_mount:
            self.start_engine()
            self.set_interval(1.0, self.check_engine)
        self.set_interval(GC_EVERY, self.collect_garbage)

    def on_ready(self) -> None:
        gc.freeze()  # modules, classes and the screen live as long as the app: no collection need scan them

    def collect_garbage(self) -> None:
        """Python's full collections scan every object (100 ms+ here): run them while nothing streams or
        trains, then freeze the survivors so the automatic ones stay short. Once in a while, unfreeze first."""
        if self.chat.generating or self.update_running:
            return
        self._collections = getattr(self, "_collections", 0) + 1
        if self._collections % 100 == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    @work(group="engine", exclusive=True)
    async def start_engine(self, restart: bool = False) -> None:
        self.set_engine_state("loading", "restarting the engine…" if restart else "loading the model…")
        self.client.start_version = self.store.active_version()  # a rollback survives a restart
        try:
            info = await (self.client.restart() if restart else self.client.start())
        except (EngineDied, EngineError, OSError) as exc:
            self.engine_failed(f"the engine did not start: {_describe(exc)}")
            return
        self.engine_ready(info)

    def engine_ready(self, info: dict) -> None:
        version = self.client.version
        if version > self.store.latest_version():  # written by an update we did not see finish
            self.store.record_version(version, self.store.versions_dir / f"v{version:04d}")
        model = Path(str(info.get("model", ""))).name or "model"
        self.refresh_status(state="idle", note="", model=model, device=str(info.get("device", "")), version=version)
        self.store.log("info", f"engine ready: {model} on {info.get('device')} at v{version}")
        self.chat.engine_ready()

    def set_engine_state(self, state: str, note: str = "") -> None:
        self.engine_state = state
        self.refresh_status(state=state, note=note)

    def engine_failed(self, message: str) -> None:
        """Any engine failure: shown, logged, and ctrl+r restarts it at the last saved version."""
        self.set_engine_state("error", "ctrl+r restarts the engine")
        self.store.log("error", message)
        self.notify(f"{message}\nPress ctrl+r to restart it at the last saved version.", title="engine",
                    severity="error", timeout=30)
        self.chat.engine_lost()

    def engine_died(self, exc: EngineDied | None = None) -> None:
        if self.engine_state == "error":
            return
        code = getattr(exc, "returncode", None) if exc else self.client.returncode
        tail = (getattr(exc, "stderr_tail", "") or self.client.stderr_tail or "").strip().splitlines()[-1:]
        self.update_running = False
        if self._update_id is not None:
            self.store.finish_update(self._update_id, "failed", error="engine died")
            self._update_id = None
        self.engine_failed(f"the engine died (exit {code}){': ' + tail[0] if tail else ''}")

    def check_engine(self) -> None:
        """Notice a death even when no request is in flight."""
        if self.engine_state not in ("loading", "error") and not self.client.alive:
            self.engine_died()

    def action_restart_engine(self) -> None:
        if self.engine_state != "error":
            self.notify("the engine is running; nothing to restart")
            return
        self.start_engine(restart=True)

    # Updates --------------------------------------------------------------------------------

    def feedback_committed(self) -> None:
        """After each stored judgment: show the count, and train every K of them."""
        pending = self.store.pending_count(self.config.method)
        self.refresh_status(pending=pending)
        self.chat.refresh_metrics()
        if pending >= self.config.update_every and not self.update_running and self.engine_state != "error":
            self.run_update()

    def action_train_now(self) -> None:
        if self.update_running:
            self.notify("an update is already training")
        elif self.engine_state in ("loading", "error"):
            self.notify("the engine is not ready", severity="warning")
        elif not self.store.pending_count(self.config.method):
            self.notify(f"no new {self.config.method} feedback to train on yet")
        else:
            self.run_update()

    @work(group="update")
    async def run_update(self) -> None:
        method = self.config.method
        examples, ids = self.store.pending_feedback(method)
        if not examples:
            return
        if len(examples) < UPDATE_WINDOW:  # top up with recent, already-used feedback (DESIGN.md: last 8)
            recent, recent_ids = self.store.recent_feedback(method, UPDATE_WINDOW)
            extra = [(e, i) for e, i in zip(recent, recent_ids) if i not in ids][-(UPDATE_WINDOW - len(examples)):]
            examples, ids = [e for e, _ in extra] + examples, [i for _, i in extra] + ids
        self.update_running = True
        self._update_id = update_id = self.store.start_update(method, ids)
        self.set_engine_state("training", f"training on {len(examples)} examples…")
        try:
            done = await self.client.update(method, examples, self.store.meta["hyperparameters"] or None,
                                            on_progress=self._update_progress)
        except EngineDied as exc:
            self.engine_died(exc)
            return
        except EngineError as exc:  # NaN/inf loss (discarded, previous version stays), out of memory, ...
            self.update_running, self._update_id = False, None
            self.store.finish_update(update_id, "failed", error=_describe(exc))
            self.store.log("warning", f"update discarded: {_describe(exc)}")
            self.set_engine_state("idle")
            self.notify(f"update discarded, v{self.client.version} stays live: {_describe(exc)}",
                        title="update", severity="warning", timeout=10)
            return
        finally:
            self.update_running = False
        self._update_id = None
        version, metrics = done["version"], done.get("metrics", {})
        self.store.finish_update(update_id, "done", version=version, metrics=metrics)
        self.store.record_version(version, self.store.versions_dir / f"v{version:04d}", metrics)
        self.store.log("info", f"update {update_id}: v{version} live after {done.get('seconds', 0):.1f} s")
        self.refresh_status(state="generating" if self.chat.generating else "idle", version=version,
                            note=f"v{version} is live", last_update=time.time(), last_seconds=done.get("seconds"),
                            pending=self.store.pending_count(method))
        self.engine_state = "generating" if self.chat.generating else "idle"
        loss = metrics.get("loss")
        self.notify(f"v{version} is live" + (f" (loss {loss:.3f})" if isinstance(loss, float) else ""),
                    title="update", timeout=4)
        self.chat.refresh_metrics()
        if self.quit_after_update:
            await self.shutdown_and_exit()
        elif self.store.pending_count(method) >= self.config.update_every:
            self.run_update()

    def _update_progress(self, event: dict) -> None:
        step = event.get("step")
        if step is not None:
            self.refresh_status(note=f"training step {step}…")

    @work(group="update")
    async def action_rollback(self) -> None:
        """ctrl+z: undo the last update (the previous version's weights, exactly)."""
        if self.update_running or self.engine_state in ("loading", "error"):
            self.notify("wait for the engine to be idle before rolling back", severity="warning")
            return
        current = self.client.version
        if current <= 0:
            self.notify("already at v0, the base model")
            return
        try:
            versions = {v["version"]: v for v in await self.client.versions()}
            parent = versions.get(current, {}).get("parent")  # the version this update was trained from
            await self.client.rollback(current - 1 if parent is None else parent)
        except EngineDied as exc:
            self.engine_died(exc)
            return
        except EngineError as exc:
            self.notify(f"rollback failed: {_describe(exc)}", severity="error")
            return
        self.store.set_active_version(self.client.version)
        self.store.log("info", f"rolled back from v{current} to v{self.client.version}")
        self.refresh_status(version=self.client.version, note=f"rolled back to v{self.client.version}")
        self.notify(f"rolled back to v{self.client.version}")

    # Status, commands, quitting --------------------------------------------------------------

    def refresh_status(self, **fields) -> None:
        self.chat.status_bar.show(update_every=self.config.update_every, **fields)

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        chat = self.chat
        for title, help_text, callback in chat.commands():
            yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Train now", "Update the model on the feedback waiting", self.action_train_now)
        yield SystemCommand("Undo last update", "Roll back to the previous version (ctrl+z)", self.action_rollback)
        yield SystemCommand("Restart engine", "Start the engine again at the last saved version (ctrl+r)",
                            self.action_restart_engine)

    async def action_quit(self) -> None:
        """Feedback is already stored; only a running update is worth waiting for."""
        if self.update_running:
            self.push_screen(QuitScreen(), self._quit_choice)
        else:
            await self.shutdown_and_exit()

    async def _quit_choice(self, choice: str | None) -> None:
        if choice == "wait":
            self.quit_after_update = True
            self.refresh_status(note="quitting after this update…")
        elif choice == "now":
            if self._update_id is not None:
                self.store.finish_update(self._update_id, "cancelled", error="quit during the update")
            await self.shutdown_and_exit()

    async def shutdown_and_exit(self) -> None:
        self.refresh_status(note="stopping the engine…")
        try:
            await asyncio.wait_for(self.client.shutdown(), timeout=5)
        except Exception:  # noqa: BLE001 - a dead or stuck engine must not keep us here
            pass
        self.exit()

    async def on_unmount(self) -> None:
        self.store.close()  # everything is committed; release the session first so a restart need not wait
        await self.client.close()


def _describe(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__
