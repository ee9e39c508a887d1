"""One line: engine activity, version, feedback waiting for the next update, last update, model, device."""

from __future__ import annotations

import time

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from tui_align.feedback import PENDING_CAP
from tui_align.loop import LoopState

STATE_STYLES = {
    "loading": "bold yellow", "generating": "bold cyan", "training": "bold magenta",
    "idle": "bold green", "error": "bold white on red", "stopping": "bold yellow",
}

BUSY = ("loading", "generating", "training", "stopping")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusBar(Static):
    """Attributes down: the screen sets `state` (the loop's) and may set a `note` of its own."""

    state: reactive[LoopState] = reactive(LoopState, init=False)
    note: reactive[str] = reactive("", init=False)  # shown instead of the loop's note while set
    model: reactive[str] = reactive("", init=False)  # until the engine says which model it loaded
    frame: reactive[int] = reactive(0, init=False)

    def on_mount(self) -> None:
        self.set_interval(5, self.refresh)  # keeps "12 s ago" current
        self.set_interval(0.15, self.spin)

    def spin(self) -> None:
        """A spinner while the engine works (loading the model, generating, training, stopping)."""
        if self.state.activity in BUSY:
            self.frame = (self.frame + 1) % len(SPINNER)

    def render(self) -> Text:
        s = self.state
        text = Text(no_wrap=True, overflow="ellipsis")
        activity = s.activity
        busy = f"{SPINNER[self.frame]} " if activity in BUSY else ""
        text.append(f" {busy}{activity} ", STATE_STYLES.get(activity, "bold"))
        note = self.note or s.note
        if note:
            text.append(f" {note}", "italic")
        text.append(f"  v{s.version}", "bold")
        more = "+" if s.pending >= PENDING_CAP else ""
        text.append(f"  feedback {s.pending}{more}/{s.update_every}")
        if s.backlog:
            text.append(f" (backlog {s.backlog}{more}: {s.window} per update; `tui-align replay` trains on all)", "yellow")
        if s.last_update is not None:
            took = f" in {s.last_seconds:.1f} s" if s.last_seconds else ""
            text.append(f"  last update {_ago(time.time() - s.last_update)}{took}", "dim")
        if s.model or self.model:
            text.append(f"  {s.model or self.model}", "dim")
        if s.device:
            text.append(f" · {s.device}", "dim")
        return text


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
