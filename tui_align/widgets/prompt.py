"""The prompt box: Enter sends, ctrl+j (or alt+enter where the terminal reports it) inserts a newline."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    BINDINGS = [
        Binding("ctrl+j,alt+enter,shift+enter", "newline", "newline", key_display="ctrl+j"),
    ]

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, **kwargs)

    async def _on_key(self, event) -> None:
        if event.key == "enter":  # TextArea would insert a newline; here Enter sends
            event.stop()
            event.prevent_default()
            text = self.text.strip()
            if text:
                self.post_message(self.Submitted(text))
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        self.insert("\n")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # With nothing to undo, ctrl+z falls through to the screen: roll back the model.
        if action == "undo" and not self.text:
            return False
        return super().check_action(action, parameters)
