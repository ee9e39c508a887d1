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
    def __init__(self, on_error: Callable[[Job, BaseException], None],
                 on_idle: Callable[[], None] = lambda: None, idle_after: float = 30.0):
        """`on_idle` runs on the worker once the queue has stayed empty `idle_after` seconds
        after some work (the engine gives memory back to the OS then, not between jobs)."""
        self.on_error, self.on_idle, self.idle_after = on_error, on_idle, idle_after
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
        idle_due = False  # work ran since the last on_idle
        while True:
            with self.cond:
                while not self.jobs and not self.stopping:
                    if not self.cond.wait(self.idle_after if idle_due else None):
                        break  # idle long enough
                if self.stopping and not self.jobs:
                    return
                job = min(self.jobs, key=_rank) if self.jobs else None
                self.running = job
            if job is None:
                idle_due = False
                self._call(self.on_idle)
                continue
            idle_due, finished = True, False
            try:
                next(job.steps)
            except StopIteration:
                finished = True
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event
                finished = True
                self._call(self.on_error, job, exc)
            with self.cond:
                self.running = None
                if finished:
                    self.jobs.remove(job)

    @staticmethod
    def _call(callback, *args) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - reporting and housekeeping must never kill the worker
            pass


def _rank(job: Job) -> tuple[int, int]:
    return job.priority, job.seq
