"""tui-align: align a language model by talking to it."""

__version__ = "0.1.0"
