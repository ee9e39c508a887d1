"""`e`: correct a candidate; the result is stored as a demonstration and as a pair against the original."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, TextArea


class EditorScreen(ModalScreen[str | None]):
    """Dismisses with the edited text (ctrl+s), or None (Esc): nothing is stored on Esc."""

    BINDINGS = [
        Binding("ctrl+s", "save", "store the edit", priority=True),
        Binding("escape", "dismiss(None)", "cancel"),
    ]

    def __init__(self, text: str, title: str = "edit the reply") -> None:
        super().__init__()
        self.original = text
        self.title_text = title

    def compose(self):
        with Vertical(id="editor-box") as box:
            box.border_title = self.title_text
            yield TextArea(self.original, id="editor-text", soft_wrap=True, tab_behavior="indent")
            yield Label("ctrl+s store the edit   esc cancel", id="editor-hint")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> None:
        text = self.query_one(TextArea).text.strip()
        self.dismiss(text or None)
