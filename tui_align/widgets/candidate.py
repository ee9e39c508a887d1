"""One candidate reply: streams token by token; its border says whether it finished or was cut off."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widgets import Static

from engine.protocol import CUT_OFF, FINISHED


def finish_note(result: dict) -> tuple[str, bool]:
    """('finished · 42 tok', True) or ('cut off at 128 tok', False): cut-off pairs teach only length."""
    reason = result.get("finish_reason", "")
    tokens = result.get("tokens", 0)
    if reason == FINISHED:
        return f"finished · {tokens} tok", True
    if reason == CUT_OFF:
        return f"cut off at {tokens} tok", False
    return f"{reason or 'stopped'} · {tokens} tok", False


class CandidateView(VerticalScroll):
    """Focusable (so a score or an edit applies to the candidate under focus) and scrollable."""

    can_focus = True
    BINDINGS = [  # before the scroll container's own left/right
        Binding("left,h", "move(-1)", "previous", show=False),
        Binding("right,l", "move(1)", "next", show=False),
    ]

    def __init__(self, slot: int, **kwargs) -> None:
        super().__init__(classes="candidate", **kwargs)
        self.slot = slot
        self.text = ""
        self.border_title = self.letter

    @property
    def letter(self) -> str:
        return chr(ord("A") + self.slot)

    def compose(self):
        yield Static("", markup=False, classes="candidate-text")

    @property
    def body(self) -> Static:
        return self.query_one(".candidate-text", Static)

    def action_move(self, step: int) -> None:
        self.parent.action_move(step)

    def reset(self) -> None:
        self.text = ""
        self.border_title = self.letter
        self.border_subtitle = "…"
        self.set_classes("candidate streaming")
        self.body.update("")

    def append(self, piece: str) -> None:
        """Repaint the reply on every token; once it wraps onto another line, ask the pane for a layout."""
        self.text += piece
        body = self.body
        body.update(Text(self.text), layout=False)
        width, height = body.size
        if not width or body.get_content_height(Size(0, 0), Size(0, 0), width) != height:
            self.parent.relayout_soon(self)

    def relayout(self) -> None:
        """Grow to the reply's lines (a reflow of the whole screen: the costly part of a frame) and follow it."""
        self.body.refresh(layout=True)
        self.call_after_refresh(self.scroll_end, animate=False)

    def finish(self, text: str, result: dict) -> None:
        self.text = text
        note, finished = finish_note(result)
        self.border_subtitle = note
        self.set_classes(f"candidate {'finished' if finished else 'cutoff'}")
        self.body.update(Text(text.strip() or "(empty reply)"))

    def mark(self, label: str, css_class: str = "") -> None:
        """Show the person's verdict in the title (e.g. 'A ✓', 'B 4/5 stored')."""
        self.border_title = f"{self.letter} {label}"
        if css_class:
            self.add_class(css_class)
