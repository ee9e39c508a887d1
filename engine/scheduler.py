"""One worker thread owns the model; jobs take turns on it a step at a time.

A job is an iterator whose every `next()` is one short unit of model work: one decoding
step of a generation, one optimizer step of an update. Before each unit the worker picks
the job with the best (priority, arrival) among those waiting, so a generate that arrives
while an update is running gets the model at the update's next step boundary, and a
cancelled job stops before its next unit.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator

GENERATE, REFERENCE, OTHER = 0, 1, 2  # priorities: lower runs first


class Job:
    def __init__(self, id_: str, kind: str, priority: int, conn=None):
        self.id, self.kind, self.priority, self.conn = id_, kind, priority, conn
        self.cancelled = threading.Event()
        self.steps: Iterator | None = None
        self.seq = 0


class Scheduler:
    def __init__(self, on_error: Callable[[Job, BaseException], None]):
        self.on_error = on_error
        self.jobs: list[Job] = []
        self.running: Job | None = None
        self.cond = threading.Condition()
        self.order = itertools.count()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job, steps: Iterator) -> Job:
        with self.cond:
            job.steps, job.seq = steps, next(self.order)
            self.jobs.append(job)
            self.cond.notify()
        return job

    def cancel(self, target: str | None = None, kinds=("generate",), conn=None) -> list[str]:
        """Flag the job of `kinds` with id `target` (None: all of them); it stops before its next step."""
        with self.cond:
            hits = [j for j in self.jobs if (j.id == target or not target) and j.kind in kinds
                    and (conn is None or j.conn is conn)]
            for job in hits:
                job.cancelled.set()
            self.cond.notify()
        return [j.id for j in hits]

    def waiting(self, priority: int) -> bool:
        """Is a job of this priority queued and not cancelled? (Checked by a running update.)"""
        return any(j.priority == priority and j is not self.running and not j.cancelled.is_set() for j in list(self.jobs))

    def snapshot(self) -> list[dict]:
        with self.cond:
            return [{"id": j.id, "type": j.kind, "running": j is self.running} for j in sorted(self.jobs, key=_rank)]

    def stop(self, timeout: float = 10.0) -> None:
        with self.cond:
            self.stopping = True
            for job in self.jobs:
                job.cancelled.set()
            self.cond.notify()
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.jobs:
                    return
                job = min(self.jobs, key=_rank)
                self.running = job
            finished = False
            try:
                next(job.steps)
            except StopIteration:
                finished = True
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event
                finished = True
                try:
                    self.on_error(job, exc)
                except Exception:  # noqa: BLE001 - reporting must never kill the worker
                    pass
            with self.cond:
                self.running = None
                if finished:
                    self.jobs.remove(job)


def _rank(job: Job) -> tuple[int, int]:
    return job.priority, job.seq
