"""One engine process on the tiny model, shared by the module: every request, spoken with raw lines and
with EngineClient, and the order the scheduler serves them in (its processes' lives: test_engine_lifecycle.py)."""

from __future__ import annotations

import os
import re
import stat
import time
from types import SimpleNamespace

import pytest

from engine.protocol import REQUESTS
from test_protocol import documented_lines
from tests.real_engine import HI, PAIR, Lines, spawn, stop, texts
from tui_align.client import EngineClient, EngineError


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    sock = folder / "e.sock"
    proc, ready = spawn(tiny_model_dir, folder, "--socket", str(sock))
    yield SimpleNamespace(socket=str(sock), session=folder / "session", proc=proc, ready=ready, folder=folder)
    stop(proc)


@pytest.fixture
def lines(engine):
    conn = Lines.unix(engine.socket)
    yield conn
    conn.close()


@pytest.fixture
async def client(engine):
    c = EngineClient()
    await c.connect(engine.socket)
    yield c
    await c.close()


def test_ready_line_and_private_socket(engine):
    assert re.fullmatch(rf"ready socket={re.escape(engine.socket)} version=\d+ protocol=1 pid={engine.proc.pid}", engine.ready)
    assert stat.S_IMODE(os.stat(engine.socket).st_mode) == 0o600


async def test_hello(client, tiny_model_dir):
    info = client.info
    assert info["model"] == str(tiny_model_dir) and info["protocol"] == 1 and info["method"] == "dpo"
    assert info["device"] == "cpu" and info["dtype"] == "float32" and info["parameters"] > 1000
    assert isinstance(info["version"], int)


async def test_generate_two_candidates_streams_both(client):
    tokens: dict[int, str] = {}
    done = None
    async for event in client.generate(HI, n=2, max_new_tokens=8, seed=3):
        if event["type"] == "token":
            tokens[event["candidate"]] = tokens.get(event["candidate"], "") + event["text"]
        else:
            done = event
    assert set(tokens) == {0, 1}
    assert len(done["candidates"]) == 2
    for i, cand in enumerate(done["candidates"]):
        assert cand["text"] == tokens[i] and cand["tokens"] == 8 and cand["finish_reason"] == "length"
        assert cand["ttft_s"] >= 0 and cand["tokens_per_s"] > 0
    assert done["seed"] == 3


async def test_update_makes_a_version_and_rollback_restores_replies_exactly(client, engine):
    await client.rollback(0)
    before = await texts(client)
    progress = []
    done = await client.update("dpo", [PAIR], {"lr": 0.05, "steps": 3}, on_progress=progress.append)
    version = done["version"]
    assert version >= 1 and client.version == version and [p["step"] for p in progress] == [1, 2, 3]
    assert {"loss", "grad_norm", "rewards/margins"} <= set(done["metrics"])
    folder = engine.session / "versions" / f"v{version:04d}"
    assert (folder / "adapter_model.safetensors").exists() and (folder / "metadata.json").exists()
    after = await texts(client)
    assert after != before
    assert (await client.rollback(0))["version"] == 0
    assert await texts(client) == before
    await client.rollback(version)
    assert await texts(client) == after
    listed = [v["version"] for v in await client.versions()]
    assert listed[0] == 0 and version in listed


async def test_generate_with_a_version_leaves_the_live_one_live(client):
    """An arena round samples an earlier version's adapter; the live version's replies do not change."""
    async def texts_of(version):
        async for event in client.generate(HI, n=2, max_new_tokens=10, seed=11, version=version):
            if event["type"] == "done":
                return [c["text"] for c in event["candidates"]], event["version"]

    await client.rollback(0)
    base = await texts(client)
    version = (await client.update("dpo", [PAIR], {"lr": 0.05, "steps": 3}))["version"]
    live = await texts(client)
    assert live != base
    assert await texts_of(0) == (base, 0)  # v0's replies exactly, while `version` stays live
    assert await texts(client) == live and (await client.status())["version"] == version
    assert await texts_of(version) == (live, version)
    with pytest.raises(EngineError, match="no version 999"):
        await texts_of(999)


async def test_score_reference_then_update_uses_it(client):
    scored = await client.score_reference([PAIR, {**PAIR, "chosen": "Hi!"}])
    assert len(scored) == 2 and all(r["ref_chosen_logps"] < 0 and r["ref_rejected_logps"] < 0 for r in scored)
    assert scored[0]["chosen"] == [{"role": "assistant", "content": PAIR["chosen"]}]
    done = await client.update("dpo", scored)
    assert done["version"] == client.version


async def test_cancel_stops_a_long_generate_quickly(client):
    seen = 0
    gen = client.generate(HI, n=2, max_new_tokens=4000, temperature=1.0, seed=1)
    async for event in gen:
        seen += 1
        if seen == 3:
            break_at = time.perf_counter()
            await client.cancel()
        if event["type"] == "done":
            break
    assert time.perf_counter() - break_at < 2.0
    assert [c["finish_reason"] for c in event["candidates"]] == ["cancelled", "cancelled"]
    assert all(c["tokens"] < 100 for c in event["candidates"])


@pytest.mark.parametrize("hyperparameters", [{"beta": float("nan")}, {"lr": float("inf")}])
async def test_non_finite_update_is_discarded(client, hyperparameters):
    version = (await client.status())["version"]
    count = len(await client.versions())
    before = await texts(client, seed=5)
    with pytest.raises(EngineError) as caught:
        await client.update("dpo", [PAIR], hyperparameters)
    assert caught.value.code == "non_finite_loss"
    assert (await client.status())["version"] == version and len(await client.versions()) == count
    assert await texts(client, seed=5) == before  # the weights are untouched


def test_malformed_lines_are_answered_and_the_connection_lives(lines):
    lines.send("{this is not json")
    error = lines.recv()
    assert error["type"] == "error" and error["id"] == "" and error["code"] == "bad_request"
    assert error["message"].startswith("malformed JSON")
    assert lines.ask({"type": "teleport", "id": "a"})["code"] == "unknown_type"
    for bad in [{"type": "generate", "id": "b", "n": "two", "messages": HI},
                {"type": "generate", "id": "c", "messages": []},
                {"type": "generate", "id": "d", "messages": HI, "top_p": 0},
                {"type": "update", "id": "e", "examples": [{"prompt": "x"}]},
                {"type": "update", "id": "f", "examples": [PAIR], "hyperparameters": {"lrr": 1}},
                {"type": "update", "id": "f2", "examples": [PAIR], "hyperparameters": {"lr": "fast"}},
                {"type": "update", "id": "f6", "examples": [PAIR], "hyperparameters": {"batch_size": 0}},
                {"type": "update", "id": "f4", "examples": [PAIR], "hyperparameters": {"loss_type": "sigmoid,nope"}},
                {"type": "update", "id": "f5", "examples": [PAIR], "hyperparameters": {"loss_weights": [1, 1, 1]}},
                {"type": "update", "id": "f3", "method": "rlhf", "examples": [PAIR]},
                {"type": "update", "id": "f4", "method": "kto", "examples": [{"prompt": "x", "completion": "y"}]},
                {"type": "update", "id": "f5", "method": "kto", "examples": [{"prompt": "x", "completion": "y",
                                                                              "label": "up"}]},
                {"type": "rollback", "id": "g", "version": 999},
                {"type": "hello", "id": "h", "v": 7}]:
        error = lines.ask(bad)
        assert error["type"] == "error" and error["code"] == "bad_request", error
    assert lines.ask({"type": "hello", "id": "ok", "v": 1})["type"] == "done"


def test_update_waits_for_a_generate_at_a_step_boundary(lines):
    lines.send({"type": "update", "id": "up", "examples": [PAIR] * 4, "hyperparameters": {"steps": 64, "lr": 1e-5}})
    first = lines.recv()
    assert first["type"] == "progress" and first["id"] == "up"
    lines.send({"type": "generate", "id": "gen", "messages": HI, "n": 2, "max_new_tokens": 3, "seed": 1})
    order = []
    while not ("up", "done") in order:
        event = lines.recv()
        order.append((event["id"], event["type"]))
    steps_before = order.index(("gen", "done"))
    assert order.index(("gen", "done")) < order.index(("up", "done"))
    assert sum(1 for e in order[:steps_before] if e == ("up", "progress")) < 63


def test_generation_timings_exclude_the_time_queued(lines):
    lines.send({"type": "generate", "id": "long", "messages": HI, "n": 1, "max_new_tokens": 200, "seed": 1})
    lines.send({"type": "generate", "id": "short", "messages": HI, "n": 1, "max_new_tokens": 2, "seed": 1})
    long_done = [e for e in lines.until("long") if e["type"] == "done"][0]
    short = lines.until("short")[-1]
    assert short["type"] == "done" and short["queued_s"] > 0.05  # it waited for the long one to finish
    ttft = short["candidates"][0]["ttft_s"]
    assert 0 <= ttft < short["queued_s"] and ttft <= short["seconds"] - short["queued_s"] + 1e-3
    assert long_done["queued_s"] < short["queued_s"]


def test_a_generate_interrupts_an_update_step_which_is_redone_exactly(lines):
    many = [{"prompt": [{"role": "user", "content": f"Question {i}: tell me about the sea."}],
             "chosen": "The sea is wide and deep and full of life. " * 6, "rejected": "No."} for i in range(48)]
    update = {"type": "update", "examples": many, "hyperparameters": {"lr": 0.05}}
    generate = {"type": "generate", "messages": HI, "n": 2, "max_new_tokens": 4, "seed": 9}

    def replies(id_):
        return [c["text"] for c in lines.ask({**generate, "id": id_, "max_new_tokens": 10})["candidates"]]

    lines.ask({"type": "rollback", "id": "r0", "version": 0})
    quiet = lines.ask({**update, "id": "quiet"})
    assert quiet["type"] == "done" and quiet["preempted"] == 0
    after_quiet = replies("q1")
    lines.ask({"type": "rollback", "id": "r1", "version": 0})
    lines.send({**update, "id": "busy"})
    while not any(j["id"] == "busy" and j["running"] for j in lines.ask({"type": "status", "id": "st"})["jobs"]):
        pass
    lines.send({**generate, "id": "now"})
    order = []
    while ("busy", "done") not in order:
        event = lines.recv()
        order.append((event["id"], event["type"]))
        if event["id"] == "busy" and event["type"] == "done":
            busy = event
    assert order.index(("now", "done")) < order.index(("busy", "done"))  # one step, yet the generate went first
    assert busy["preempted"] >= 1
    assert replies("b1") == after_quiet  # the interrupted step was redone from scratch: same weights


def test_cancel_stops_an_update_mid_step_and_discards_it(lines):
    version = lines.ask({"type": "status", "id": "s0"})["version"]
    many = [{"prompt": f"Question {i}: the sea?", "chosen": "Wide and deep. " * 12, "rejected": "No."} for i in range(48)]
    lines.send({"type": "update", "id": "long", "examples": many, "hyperparameters": {"steps": 5}})
    while not any(j["id"] == "long" and j["running"] for j in lines.ask({"type": "status", "id": "st"})["jobs"]):
        pass
    started = time.perf_counter()
    lines.send({"type": "cancel", "id": "c", "target": "long"})
    events = {e["id"]: e for e in [lines.recv(), lines.recv()]}
    while "long" not in events or events["long"]["type"] == "progress":
        event = lines.recv()
        events[event["id"]] = event
    assert events["c"]["cancelled"] == ["long"]
    assert events["long"]["type"] == "error" and events["long"]["code"] == "cancelled"
    assert time.perf_counter() - started < 3.0
    assert lines.ask({"type": "status", "id": "s1"})["version"] == version


def test_every_documented_request_is_accepted(lines, tmp_path):
    for message in documented_lines():
        if message["type"] not in REQUESTS or message["type"] == "shutdown":
            continue
        if message["type"] == "save":
            message["path"] = str(tmp_path / "saved")
        answer = lines.ask(message)
        if message.get("method") == "ppo" and answer["type"] == "error":
            assert answer["code"] == "not_available"
            continue
        assert answer["type"] == "done", (message, answer)
    assert (tmp_path / "saved" / "adapter_model.safetensors").exists()
