"""`q` while an update trains: wait for it, quit now, or keep chatting."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label


class QuitScreen(ModalScreen[str | None]):
    """Dismisses with 'wait', 'now', or None (stay)."""

    BINDINGS = [
        Binding("w,enter", "dismiss('wait')", "wait, then quit"),
        Binding("y", "dismiss('now')", "quit now"),
        Binding("escape,n", "dismiss(None)", "keep chatting"),
    ]

    def compose(self):
        with Vertical(id="quit-box") as box:
            box.border_title = "quit?"
            yield Label("An update is training. Your feedback is already stored either way.")
            yield Label("[b]w[/b] wait for the update, then quit (the new version is kept)")
            yield Label("[b]y[/b] quit now (this update is lost; it reruns next time)")
            yield Label("[b]esc[/b] keep chatting")
