"""Training metrics to TensorBoard, Trackio or W&B (`--report-to`), through accelerate's trackers.

Headless runs log every optimizer step and every evaluation; the live engine logs one point
per update, at the new version's number. Only the main process logs. The libraries' own
chatter (Trackio prints where its dashboard is) goes to the run's log, not the terminal.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from pathlib import Path

from engine.protocol import REPORT_TO, UserError

PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
PROJECT = "tui-align"  # the Trackio / W&B project every run logs to; runs are named after their output
log = logging.getLogger("engine.tracking")


def check_report_to(report_to: str) -> None:
    """Fail before any work when the tracker is unknown or its library is missing."""
    if report_to not in REPORT_TO:
        raise UserError(f"--report-to {report_to}: choose one of {', '.join(REPORT_TO)}")
    package = PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f"--report-to {report_to}: {package} is not installed "
                        f"(pip install {package}, or pip install 'tui-align[logging]')")


class Tracker:
    """One run on one tracker: `log(metrics, step)` takes the trainers' metrics as they are."""

    def __init__(self, report_to: str, logging_dir: str | Path, run_name: str, config: dict | None = None):
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        from engine.trainers.base import process_state

        check_report_to(report_to)
        process_state()  # accelerate's trackers log through its state
        self.report_to = report_to
        if report_to == "tensorboard":
            self.where = Path(logging_dir) / run_name
            self.tracker = TensorBoardTracker(run_name, logging_dir)
        elif report_to == "trackio":
            self.where = f"trackio project {PROJECT}, run {run_name} (see it: trackio show --project {PROJECT})"
            self.tracker = TrackioTracker(PROJECT, name=run_name)
        else:
            self.where = f"wandb project {PROJECT}, run {run_name}"
            self.tracker = WandBTracker(PROJECT, name=run_name)
        with self._chatter():
            self.tracker.start()
            if config:  # hyperparameters: plain values only (TensorBoard's hparams refuse None)
                self.tracker.store_init_configuration(
                    {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in config.items()})

    def log(self, metrics: dict, step: int) -> None:
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        with self._chatter():
            self.tracker.log(values, step=step)

    def finish(self) -> None:
        with self._chatter():
            if self.report_to == "trackio":  # through the module: it forgets the run (else its exit hook ends it again, aloud)
                import trackio

                trackio.finish()
            else:
                self.tracker.finish()

    @contextlib.contextmanager
    def _chatter(self):
        """What the library prints goes to the log."""
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                yield
        finally:
            if out.getvalue().strip():
                log.info("%s: %s", self.report_to, out.getvalue().strip())


def open_tracker(report_to: str | None, logging_dir: str | Path, run_name: str, config: dict | None = None):
    """A Tracker, or None for `none`; only the main process of a launched run gets one."""
    if not report_to or report_to == "none":
        return None
    from engine.trainers.base import process_state

    if not process_state().is_main_process:
        return None
    return Tracker(report_to, logging_dir, run_name, config)
