"""The Textual app of `tui-align chat-train`: a view of the LiveLoop (tui_align/loop.py).

The loop owns the live policy: the engine's life, the judgments, the updates, rollbacks.
The app hands its state down as one reactive (`loop_state`), turns its notices into toasts,
and runs its async calls as workers on the event loop, so the screen never waits. Every
person's action is committed to the store (by the loop) before the screen says it is stored.
"""

from __future__ import annotations

import asyncio
import gc
import time

from textual import events, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive

from tui_align.client import EngineClient
from tui_align.loop import LiveLoop, LoopConfig, LoopState
from tui_align.screens.chat import ChatScreen
from tui_align.screens.quit import QuitScreen
from tui_align.store import SessionStore

GC_EVERY = 5.0  # seconds between garbage collections at quiet moments
QUIET = 2.0  # seconds with no key and no change of the loop's state: a full collection is not felt
ENGINE_NICENESS = 10  # the engine's threads yield the CPU to the screen
NOTICE_SEVERITY = {"error": ("error", 30), "warning": ("warning", 10), "update": ("information", 4),
                   "information": ("information", 12)}


def engine_client(store: SessionStore, model: str | None, method: str, device: str = "auto",
                  report_to: str = "none", gradient_checkpointing: bool = False) -> EngineClient:
    """The engine process chat-train starts: on the session's folder, niced below the screen."""
    extra = ["--report-to", report_to] if report_to != "none" else []
    extra += ["--gradient-checkpointing"] if gradient_checkpointing else []
    return EngineClient(model=model, method=method, session_dir=store.folder, device=device, nice=ENGINE_NICENESS,
                        extra_args=extra)


class ChatTrainApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tui-align"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    BINDINGS = [
        Binding("ctrl+q", "quit", "quit", show=False, priority=True),
        Binding("ctrl+r", "restart_engine", "restart engine", priority=True),
    ]

    loop_state: reactive[LoopState] = reactive(LoopState, init=False)

    def __init__(self, store: SessionStore, config: LoopConfig, client: EngineClient, model_name: str = "",
                 start_engine: bool = True) -> None:
        super().__init__()
        self.store, self.config = store, config
        self.loop = LiveLoop(store, client, config, on_state=self._loop_changed, on_notice=self._notice)
        self.set_reactive(ChatTrainApp.loop_state, self.loop.state)
        self.model_name = model_name  # shown until the engine says what it loaded
        self.start_engine_on_mount = start_engine  # False only for screen snapshots
        self.quit_after_update = False
        self.last_activity = time.monotonic()  # a key, or a change of the loop's state

    @property
    def client(self) -> EngineClient:
        return self.loop.client

    def _loop_changed(self, state: LoopState) -> None:
        self.loop_state = state
        self.last_activity = time.monotonic()

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self.last_activity = time.monotonic()
        await super().on_event(event)

    def _notice(self, text: str, severity: str) -> None:
        level, timeout = NOTICE_SEVERITY.get(severity, ("information", 8))
        self.notify(text, title="update" if severity == "update" else "engine" if level == "error" else "",
                    severity=level, timeout=timeout)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restart_engine":  # only offered (and shown) once the engine has failed
            return self.loop_state.engine == "error"
        return True

    # Start-up and the engine's life -------------------------------------------------------

    def get_default_screen(self) -> ChatScreen:
        self.chat = ChatScreen(self.loop)
        return self.chat

    def on_mount(self) -> None:
        if self.start_engine_on_mount:
            self.start_engine()
            self.set_interval(1.0, self.loop.check_engine)
        self.set_interval(GC_EVERY, self.collect_garbage)

    def on_ready(self) -> None:
        gc.freeze()  # modules, classes and the screen live as long as the app: no collection need scan them

    def collect_garbage(self) -> None:
        """Python's full collections scan every object (20-100 ms here): run them while nothing streams or
        trains and the person has not pressed a key for a while, then freeze the survivors so the automatic
        ones stay short. Once in a while, unfreeze first."""
        if self.loop_state.activity != "idle" or time.monotonic() - self.last_activity < QUIET:
            return
        self._collections = getattr(self, "_collections", 0) + 1
        if self._collections % 100 == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()

    @work(group="engine", exclusive=True)
    async def start_engine(self, restart: bool = False) -> None:
        await self.loop.start(restart=restart)

    def action_restart_engine(self) -> None:
        if self.loop_state.engine != "error":
            self.notify("the engine is running; nothing to restart")
            return
        self.start_engine(restart=True)

    # Updates --------------------------------------------------------------------------------

    def action_train_now(self) -> None:
        refusal = self.loop.train_now()
        if refusal:
            self.notify(refusal, severity="warning" if "not ready" in refusal else "information")

    @work(group="update")
    async def action_rollback(self) -> None:
        """ctrl+z: undo the last update (the previous version's weights, exactly)."""
        said = await self.loop.rollback()
        self.notify(said, severity="information" if said.startswith(("rolled", "already")) else "warning")

    def watch_loop_state(self, old: LoopState, new: LoopState) -> None:
        if self.quit_after_update and old.updating and not new.updating:
            self.run_worker(self.shutdown_and_exit(), group="quit")

    # Commands, quitting -----------------------------------------------------------------------

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        for title, help_text, callback in self.chat.commands():
            yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Train now", "Update the model on the feedback waiting (u)", self.action_train_now)
        yield SystemCommand("Undo last update", "Roll back to the previous version (ctrl+z)", self.action_rollback)
        yield SystemCommand("Restart engine", "Start the engine again at the last saved version (ctrl+r)",
                            self.action_restart_engine)

    async def action_quit(self) -> None:
        """Feedback is already stored; only a running update is worth waiting for."""
        if self.loop.updating:
            self.push_screen(QuitScreen(), self._quit_choice)
        else:
            await self.shutdown_and_exit()

    async def _quit_choice(self, choice: str | None) -> None:
        if choice == "wait":
            self.quit_after_update = True
            self.chat.status_bar.note = "quitting after this update…"
        elif choice == "now":
            await self.shutdown_and_exit()

    async def shutdown_and_exit(self) -> None:
        await self.loop.close()
        self.exit()

    async def on_unmount(self) -> None:
        await asyncio.wait_for(self.loop.close(), timeout=15)
        self.store.close()
