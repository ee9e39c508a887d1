"""engine/scheduler.py and the server's error mapping, without a model."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from engine.scheduler import GENERATE, OTHER, Job, Scheduler


def steps(log: list, name: str, count: int, gate: threading.Event | None = None):
    for i in range(count):
        if gate is not None:
            gate.wait(5)
        log.append((name, i))
        yield


def wait_until(predicate, timeout=5.0):
    end = time.time() + timeout
    while not predicate():
        assert time.time() < end, "timed out"
        time.sleep(0.005)


def test_generate_overtakes_a_running_update_at_a_step_boundary():
    log: list = []
    failures: list = []
    scheduler = Scheduler(lambda job, exc: failures.append(exc))
    gate = threading.Event()
    scheduler.submit(Job("u", "update", OTHER), steps(log, "u", 5, gate))
    wait_until(lambda: scheduler.running is not None)
    scheduler.submit(Job("g", "generate", GENERATE), steps(log, "g", 3))
    scheduler.submit(Job("r", "rollback", OTHER), steps(log, "r", 1))
    # the update's first step is already running (blocked on the gate) when the others arrive
    gate.set()
    wait_until(lambda: len(log) == 9)
    scheduler.stop()
    assert log[0] == ("u", 0)
    assert log[1:4] == [("g", 0), ("g", 1), ("g", 2)]  # the generate runs at the next boundary, whole
    assert log[4:8] == [("u", 1), ("u", 2), ("u", 3), ("u", 4)]
    assert log[8] == ("r", 0)  # rollback waits its turn behind the earlier update
    assert not failures


def test_cancel_flags_only_matching_jobs_and_failures_are_reported():
    failures: list = []
    scheduler = Scheduler(lambda job, exc: failures.append((job.id, str(exc))))
    conn_a, conn_b = object(), object()
    gate = threading.Event()

    def blocked():
        gate.wait(5)
        yield

    mine = scheduler.submit(Job("g1", "generate", GENERATE, conn_a), blocked())
    theirs = scheduler.submit(Job("g2", "generate", GENERATE, conn_b), iter([None]))
    update = scheduler.submit(Job("u1", "update", OTHER, conn_a), iter([None]))
    assert scheduler.cancel(None, kinds=("generate",), conn=conn_a) == ["g1"]
    assert mine.cancelled.is_set() and not theirs.cancelled.is_set() and not update.cancelled.is_set()
    assert scheduler.cancel("u1", kinds=("generate", "update"), conn=conn_a) == ["u1"]

    def boom():
        raise RuntimeError("kaput")
        yield

    scheduler.submit(Job("b", "save", OTHER), boom())
    gate.set()
    wait_until(lambda: failures)
    scheduler.stop()
    assert failures == [("b", "kaput")]


@pytest.mark.parametrize("make, code", [
    (lambda torch: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "out_of_memory"),
    (lambda torch: __import__("engine.protocol").protocol.NonFiniteLoss("loss is nan: update discarded"), "non_finite_loss"),
    (lambda torch: RuntimeError("shape mismatch"), "model_error"),
    (lambda torch: __import__("engine.protocol").protocol.DataError("example 2: chosen is empty"), "bad_request"),
])
def test_job_failures_become_error_events(make, code):
    import torch

    from engine.server import Server

    server = Server.__new__(Server)  # no model: only the error mapping is exercised
    server.engine = SimpleNamespace(version=3)
    sent: list = []
    job = Job("u9", "update", OTHER, SimpleNamespace(send_threadsafe=sent.append))
    server._job_failed(job, make(torch))
    event = json.loads(sent[0])
    assert event["type"] == "error" and event["id"] == "u9" and event["code"] == code
    if code == "non_finite_loss":
        assert "version 3 stays active" in event["message"]


def test_on_idle_runs_once_after_work_then_quiet():
    log: list = []
    idle: list = []
    scheduler = Scheduler(lambda job, exc: None, on_idle=lambda: idle.append(len(log)), idle_after=0.05)
    time.sleep(0.2)
    assert idle == []  # nothing ran yet: nothing to clean up
    scheduler.submit(Job("u", "update", OTHER), steps(log, "u", 2))
    wait_until(lambda: idle == [2])
    time.sleep(0.2)
    assert idle == [2]  # once per quiet spell
    scheduler.submit(Job("g", "generate", GENERATE), steps(log, "g", 1))
    wait_until(lambda: idle == [2, 3])
    scheduler.stop()
