"""The conversation so far: one block per turn (Markdown rendered), newest at the bottom."""

from __future__ import annotations

from rich.markdown import Markdown
from textual.containers import VerticalScroll
from textual.widgets import Static

ROLE_TITLES = {"user": "you", "assistant": "model", "system": "note"}
MAX_SHOWN = 60  # older turns stay in the store; a long scrollback would slow every layout


def hard_breaks(text: str) -> str:
    """Keep a reply's line breaks (a poem, a list without markers); Markdown would join the lines."""
    parts = text.split("```")
    return "```".join(part if i % 2 else part.replace("\n", "  \n") for i, part in enumerate(parts))


class Turn(Static):
    """One message; its role is a CSS class (user / assistant / system) for app.tcss.

    A Static holding a rich Markdown renderable: one widget per turn keeps layout cheap
    (Textual's Markdown widget is a tree of widgets per block).
    """

    def __init__(self, role: str, content: str, note: str = "") -> None:
        super().__init__(Markdown(hard_breaks(content.strip()) or "*(empty)*"), classes=f"turn {role}")
        self.border_title = ROLE_TITLES.get(role, role)
        if note:
            self.border_subtitle = note


class ConversationPane(VerticalScroll):
    """Past turns. `add_turn` appends and scrolls, `remove_last_turn` undoes it; `show` replaces everything
    (start-up, new conversation)."""

    can_focus = True

    def compose(self):
        yield Static("Type a prompt below and press Enter.", classes="empty-hint")

    def add_turn(self, role: str, content: str, note: str = "") -> None:
        # Direct children only: a query would walk every widget of every turn on each judgment.
        children = list(self.children)
        for child in children:
            if child.has_class("empty-hint"):
                child.remove()
        turns = [child for child in children if isinstance(child, Turn)]
        if len(turns) >= MAX_SHOWN:
            turns[0].remove()
        self.mount(Turn(role, content, note))
        self.scroll_end(animate=False)

    def remove_last_turn(self) -> None:
        """A judgment taken back: its reply (or note) leaves the conversation."""
        turns = [child for child in self.children if isinstance(child, Turn)]
        if turns:
            turns[-1].remove()

    def show(self, messages: list[dict], banner: str = "") -> None:
        self.remove_children()
        if banner:
            self.mount(Static(banner, classes="banner"))
        if not messages:
            self.mount(Static("Type a prompt below and press Enter.", classes="empty-hint"))
        self.mount_all([Turn(m["role"], m["content"]) for m in messages[-MAX_SHOWN:]])
        self.scroll_end(animate=False)
