"""The log of a headless run: library warnings and log records go to OUTPUT/train.log, not the terminal.

A person running `tui-align train` can act on our one-line errors and the progress bars;
a FutureWarning from inside transformers or peft (say `is_gradient_checkpointing` is
deprecated) they can do nothing about. Those are kept in memory until the run's folder
exists, then written to its log. Standard library only: the CLI enters it before torch loads.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

LOG_NAME = "train.log"
LIBRARIES = ("transformers", "peft", "accelerate", "datasets", "huggingface_hub", "torch", "trackio", "engine",
             "py.warnings")


class RunLog(logging.Handler):
    """Records held in memory until `attach(folder)`, then appended to folder/train.log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.held: list[str] = []
        self.file = None

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        if self.file is None:
            self.held.append(line)
        else:
            self.file.write(line + "\n")
            self.file.flush()

    def route(self) -> None:
        """Send the libraries' records here only. Again once they are imported: transformers adds
        its own stderr handler on first use."""
        for name in LIBRARIES:
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = [self], False

    def attach(self, folder: str | Path) -> Path:
        """From now on write to folder/train.log (what was held first); returns its path."""
        self.route()
        path = Path(folder) / LOG_NAME
        if self.file is None:
            self.file = path.open("a", encoding="utf-8")
            self.file.write("".join(line + "\n" for line in self.held))
            self.file.flush()
            self.held.clear()
        return path

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


@contextlib.contextmanager
def quiet_libraries():
    """Route warnings and the libraries' loggers to a RunLog while the block runs; yields it."""
    handler = RunLog()
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in LIBRARIES}
    ours = logging.getLogger("engine")
    level = ours.level
    ours.setLevel(logging.INFO)  # what the engine notes (a tracker's dashboard address) is worth keeping
    handler.route()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per place, into the log
            logging.captureWarnings(True)  # warnings -> the "py.warnings" logger
            yield handler
    finally:
        logging.captureWarnings(False)
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        ours.setLevel(level)
        handler.close()
