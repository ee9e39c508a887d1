"""The N candidate replies side by side (stacked when narrow), and the feedback keys that judge them.

The feedback keys live here, not on the screen: they only act while focus is in this pane, which
the screen gives it only once every candidate is done. A key typed in the prompt box never gets here.
"""

from __future__ import annotations

import time

from textual.binding import Binding
from textual.containers import Container
from textual.message import Message

from tui_align.rounds import SCORED_METHODS, SLOT_LETTERS
from tui_align.widgets.candidate import CandidateView

MARK_METHODS = ("ppo", "kto")  # sessions that judge each reply on its own (+/-): ppo scores, kto marks
LAYOUT_EVERY = 0.25  # seconds between layouts while candidates stream, however many wrap a line meanwhile


class CandidatePane(Container):
    BINDINGS = [
        *(Binding(letter, f"feedback('pick', {slot})", "pick", show=slot == 0, key_display="a/b")
          for slot, letter in enumerate(SLOT_LETTERS)),
        Binding("1", "feedback('digit', 1)", "rank/score", key_display="1-5"),
        *(Binding(str(d), f"feedback('digit', {d})", show=False) for d in range(2, 10)),
        Binding("plus,equals_sign", "feedback('thumb', 1)", "thumbs", key_display="+/-"),
        Binding("minus", "feedback('thumb', 0)", show=False),
        Binding("t", "feedback('tie')", "tie"),
        Binding("x", "feedback('both_bad')", "bad"),
        Binding("s", "feedback('skip')", "skip"),
        Binding("e", "feedback('edit')", "edit"),
        Binding("r", "feedback('regenerate')", "regen"),
    ]

    class Focused(Message):
        """Focus moved to another candidate: the next score key judges it."""

    class Feedback(Message):
        """The person judged the round: kind is pick/digit/thumb/tie/both_bad/skip/edit/regenerate."""

        def __init__(self, kind: str, slot: int, value: int | None = None) -> None:
            super().__init__()
            self.kind, self.slot, self.value = kind, slot, value

    def __init__(self, n: int, method: str = "dpo", **kwargs) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.method = method
        self.judging = False  # set by the screen: votes count only between `done` and the feedback
        self._wrapped: set[CandidateView] = set()  # views whose reply outgrew them since the last layout
        self._last_layout = 0.0

    def compose(self):
        for slot in range(self.n):
            yield CandidateView(slot, id=f"candidate-{slot}")

    @property
    def views(self) -> list[CandidateView]:
        """The views of this round's candidates (an arena round shows 2 of the pane's N)."""
        return list(self.query(CandidateView))[:self.n]

    def focused_slot(self) -> int:
        focused = self.screen.focused
        return focused.slot if isinstance(focused, CandidateView) else 0

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action != "feedback":
            return True
        kind = parameters[0]
        if kind == "pick" and parameters[1] >= self.n:
            return False
        if kind in ("pick", "tie") and (self.method in SCORED_METHODS or self.method in MARK_METHODS):
            return False  # a score or mark session: letters are not votes
        if kind == "thumb" and self.method not in MARK_METHODS:  # grpo's group is scored on 1-5 only
            return False
        if kind == "digit" and self.method == "kto":  # kto marks + / - only
            return False
        if kind == "digit" and self.method in SCORED_METHODS and parameters[1] > 5:
            return False
        if kind == "digit" and self.method not in SCORED_METHODS and (self.n <= 2 or parameters[1] > self.n):
            return False
        return True if self.judging else None  # None: shown greyed out while streaming

    def on_descendant_focus(self) -> None:
        self.post_message(self.Focused())

    def action_feedback(self, kind: str, value: int | None = None) -> None:
        slot = value if kind == "pick" else self.focused_slot()
        self.post_message(self.Feedback(kind, slot, value))

    def action_move(self, step: int) -> None:
        views = self.views
        views[(self.focused_slot() + step) % len(views)].focus()

    def reset(self, n: int | None = None) -> None:
        """Empty every view for a new round of `n` candidates (default: as many as before)."""
        self.n = n or self.n
        for view in self.query(CandidateView):
            view.reset()
            view.display = view.slot < self.n

    def relayout_soon(self, view: CandidateView) -> None:
        """Lay out `view` again now, or when LAYOUT_EVERY has passed since the last layout: four narrow views
        wrap a line nearly every frame between them, and each layout reflows the whole screen."""
        pending = bool(self._wrapped)
        self._wrapped.add(view)
        if pending:
            return
        wait = self._last_layout + LAYOUT_EVERY - time.monotonic()
        if wait > 0:
            self.set_timer(wait, self._relayout)
        else:
            self._relayout()

    def _relayout(self) -> None:
        self._last_layout = time.monotonic()
        wrapped, self._wrapped = self._wrapped, set()
        for view in wrapped:
            view.relayout()

    def focus_first(self) -> None:
        self.views[0].focus()
