"""Progress bars: one per long phase (converting the model, loading, training, evaluating, saving).

They go to stderr and only when stderr is a terminal: a log file or CI's captured output gets
none (not even the libraries' own bars, which would print there regardless). While a phase of
ours shows its bar, the libraries' bars inside it are hidden: one bar per phase.
"""

from __future__ import annotations

import contextlib
import io
import sys


_stderr = None  # the real stderr while libraries_hidden() has swapped it out


def stderr():
    """Where our bars go: stderr, also inside libraries_hidden() (a phase nested in another)."""
    return _stderr or sys.stderr


def on_terminal() -> bool:
    """Is stderr a terminal (where bars redraw in place rather than pile up)?"""
    stream = stderr()
    return hasattr(stream, "isatty") and stream.isatty()


def bar(iterable=None, total: int | None = None, desc: str = "", show: bool = True, **kwargs):
    """A tqdm bar on stderr (over `iterable`, or updated by hand), drawn only when `show` and stderr
    is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not (show and on_terminal()), file=stderr(), **kwargs)


@contextlib.contextmanager
def libraries_hidden():
    """Hide the libraries' bars and prints to stderr while the block runs (transformers' "Loading
    weights", the GGUF reader's de-quantizing bar, which takes no switch); what they log still goes
    to the run's log. Our bars keep the real stderr."""
    from transformers.utils import logging as hf_logging

    global _stderr
    outer, shown = _stderr, hf_logging.is_progress_bar_enabled()
    _stderr = stderr()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        _stderr = outer
        if shown:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def phase(desc: str, total: int, show: bool = True):
    """`with phase("saving", 2) as done: ...; done()`: our bar for a phase of `total` parts, the
    libraries' hidden inside it."""
    with bar(total=total, desc=desc, show=show) as shown, libraries_hidden():
        yield lambda: shown.update(1)
