"""tui-align: align a language model by talking to it."""

__version__ = "0.1.0"

# "A few sentences", not "one short sentence": that made brief replies easy to teach and fuller ones
# impossible; with no length at all half the replies were cut off, and a judge cannot pick between
# two cut-off replies (bench/RESULTS.md, issue 12).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer in a few sentences."


def _sqlite_utils_without_pandas() -> None:
    """sqlite-utils imports pandas and numpy where they are installed (datasets brings them along) to
    map their types, which we never store; that took 1-2 s of the TUI's first frame. Hide them during
    that one import: they import as usual afterwards (replay, datasets, torch)."""
    import sys

    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    if "sqlite_utils" in sys.modules or not hidden:
        return
    sys.modules.update(dict.fromkeys(hidden))  # None: an import of it raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]


_sqlite_utils_without_pandas()
