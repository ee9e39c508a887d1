"""One line: engine state, device, model, version, feedback waiting for the next update, last update."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import Static

STATE_STYLES = {
    "loading": "bold yellow", "generating": "bold cyan", "training": "bold magenta",
    "idle": "bold green", "error": "bold white on red",
}

BUSY = ("loading", "generating", "training")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class StatusBar(Static):
    """Attributes down: the app sets fields with `show(...)`; the bar renders them, nothing else."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.fields = {"state": "loading", "device": "", "model": "", "version": 0, "pending": 0,
                       "update_every": 4, "last_update": None, "last_seconds": None, "note": ""}
        self.frame = 0

    def on_mount(self) -> None:
        self.set_interval(5, self.refresh_text)  # keeps "12 s ago" current
        self.set_interval(0.15, self.spin)
        self.refresh_text()

    def spin(self) -> None:
        """A spinner while the engine works (loading the model, generating, training)."""
        if self.fields["state"] in BUSY:
            self.frame = (self.frame + 1) % len(SPINNER)
            self.refresh_text()

    def show(self, **fields) -> None:
        self.fields.update(fields)
        self.refresh_text()

    def refresh_text(self) -> None:
        f = self.fields
        text = Text(no_wrap=True, overflow="ellipsis")
        busy = f"{SPINNER[self.frame]} " if f["state"] in BUSY else ""
        text.append(f" {busy}{f['state']} ", STATE_STYLES.get(f["state"], "bold"))
        if f["note"]:
            text.append(f" {f['note']}", "italic")
        text.append(f"  v{f['version']}", "bold")
        text.append(f"  feedback {f['pending']}/{f['update_every']}")
        if f["last_update"] is not None:
            ago = time.time() - f["last_update"]
            took = f" in {f['last_seconds']:.1f} s" if f["last_seconds"] else ""
            text.append(f"  last update {_ago(ago)}{took}", "dim")
        if f["model"]:
            text.append(f"  {f['model']}", "dim")
        if f["device"]:
            text.append(f" · {f['device']}", "dim")
        self.update(text)


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
