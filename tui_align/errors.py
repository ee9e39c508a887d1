"""The person-facing side's own failures (the engine's are in engine.protocol and tui_align.client).

Its own module, free of SQLite and Textual, so the loop and the screens catch it without
importing the store (whose sqlite-utils import would slow `tui-align --help`).
"""

from __future__ import annotations


class WriteFailed(Exception):
    """A write to the session database failed (a full disk, an I/O error): none of it was stored."""

    def __rich__(self) -> str:  # should one escape the TUI, Textual shows this line, not a traceback
        return f"error: {self}"
