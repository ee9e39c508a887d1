"""Faults and hostile input against the real engine process (issue 16): no lock-out, no stall,
no traceback, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import engine.generation as generation
from engine.generation import Generation
from engine.protocol import MAX_DEPTH
from engine.server import HELLO_DEADLINE_S, TEMP_PREFIX
from tests.real_engine import ENV, HI, Lines, spawn, stop

TOKEN = "the-owners-token"


@pytest.fixture(scope="module")
def tcp_engine(tiny_model_dir, tmp_path_factory):
    """A token engine on TCP whose session holds what a killed version write leaves behind."""
    folder = tmp_path_factory.mktemp("tcp")
    partial = folder / "session" / "versions" / "v0002.partial"
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half a file")
    token = folder / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    proc, ready = spawn(tiny_model_dir, folder, "--listen", "127.0.0.1:0", "--token-file", str(token))
    port = int(re.search(r"listen=127\.0\.0\.1:(\d+)", ready).group(1))
    yield SimpleNamespace(port=port, folder=folder, proc=proc, partial=partial)
    stop(proc)


def connect(port: int) -> Lines:
    return Lines(socket.create_connection(("127.0.0.1", port)))


def owner(port: int) -> Lines:
    conn = connect(port)
    assert conn.ask({"type": "hello", "id": "h", "token": TOKEN})["type"] == "done"
    return conn


def refused(conn: Lines) -> dict:
    """The engine's answer to an unauthenticated connection: one `unauthorized`, then the close."""
    error = conn.recv()
    assert error["type"] == "error" and error["code"] == "unauthorized", error
    assert conn.recv() is None
    conn.close()
    return error


def test_a_silent_stranger_never_holds_the_slot(tcp_engine):
    stranger = connect(tcp_engine.port)  # connects, sends nothing
    connected = time.monotonic()
    me = owner(tcp_engine.port)  # the owner is served at once, not told `busy`
    assert me.ask({"type": "status", "id": "s"})["type"] == "done"
    second = connect(tcp_engine.port)  # with the token, the slot is the owner's: busy
    second.send({"type": "hello", "id": "h2", "token": TOKEN})
    assert second.recv()["code"] == "busy" and second.recv() is None
    for first_line in ["{not json", "[" * 100_000, json.dumps({"type": "status", "id": "x"})]:
        conn = connect(tcp_engine.port)
        conn.send(first_line)
        refused(conn)  # malformed or deep or not a hello: unauthorized and closed, never bad_request
    assert me.ask({"type": "status", "id": "s2"})["type"] == "done"  # the owner was never disturbed
    error = refused(stranger)
    waited = time.monotonic() - connected
    assert HELLO_DEADLINE_S - 0.5 < waited < HELLO_DEADLINE_S + 20 and "within 5 s" in error["message"]
    me.close()


def test_the_partial_folder_of_a_failed_write_is_removed_at_start(tcp_engine):
    assert not tcp_engine.partial.exists() and tcp_engine.partial.parent.is_dir()


def test_limits_are_bad_requests_answered_at_once(tcp_engine):
    me = owner(tcp_engine.port)
    try:
        me.send("[" * 100_000)  # raised RecursionError out of decode, and the connection dropped
        error = me.recv()
        assert error["code"] == "bad_request" and f"deeper than {MAX_DEPTH}" in error["message"]
        me.send({"type": "generate", "id": "d", "messages": HI, "seed": json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))})
        error = me.recv()  # not parsed, so not answered under its id
        assert error["code"] == "bad_request" and error["id"] == "" and "deeper" in error["message"]
        started = time.monotonic()
        huge = me.ask({"type": "generate", "id": "g1", "messages": [{"role": "user", "content": "a" * 1_000_000}]})
        assert huge["code"] == "bad_request" and "context of 512 tokens" in huge["message"]
        over = me.ask({"type": "generate", "id": "g2", "messages": [{"role": "user", "content": "hi " * 600}]})
        assert over["code"] == "bad_request" and re.search(r"the prompt is \d+ tokens; the model's context is 512", over["message"])
        assert time.monotonic() - started < 10  # no prefill ran: 1 MB took minutes of the worker before
        ok = me.ask({"type": "generate", "id": "g3", "messages": HI, "n": 1, "max_new_tokens": 3, "seed": 1})
        assert ok["type"] == "done"
    finally:
        me.close()


def test_options_are_checked_before_torch_or_the_model_loads(tmp_path):
    """Each bad option: one line, exit 2, in well under a second, and torch never imported."""
    good, open_token = tmp_path / "good", tmp_path / "open"
    for path, mode in ((good, 0o600), (open_token, 0o644)):
        path.write_text("secret")
        path.chmod(mode)
    (tmp_path / "s" / "versions" / "v0001").mkdir(parents=True)
    (tmp_path / "s" / "versions" / "v0001" / "adapter_config.json").write_text("{}")
    missing = str(tmp_path / "no-model")  # a model loaded first would fail on this instead
    cases = {
        "port 99999 is out of range": ["--listen", "127.0.0.1:99999", "--token-file", str(good)],
        "expected HOST:PORT": ["--listen", "127.0.0.1:http", "--token-file", str(good)],
        "permissions 0644 let other users read it; run chmod 600": ["--listen", "127.0.0.1:0", "--token-file", str(open_token)],
        "--version 3: no such version": ["--session-dir", str(tmp_path / "s"), "--version", "3"],
        "--version 2: no --session-dir": ["--version", "2"],
    }
    code = (
        "import contextlib, io, json, sys, time\n"
        "from engine.__main__ import main\n"
        "out = []\n"
        f"for argv in {[['serve', '--model', missing, *case] for case in cases.values()]!r}:\n"
        "    err, began = io.StringIO(), time.perf_counter()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(argv)\n"
        "    out.append([rc, err.getvalue(), time.perf_counter() - began])\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    report = json.loads(run.stdout)
    assert not report["torch"], run.stderr
    for expected, (rc, stderr, seconds) in zip(cases, report["results"]):
        assert rc == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1 and expected in stderr, stderr
        assert seconds < 1.0
    began = time.monotonic()  # the whole process, as a person runs it
    out = subprocess.run([sys.executable, "-m", "engine", "serve", "--model", missing, *cases["port 99999 is out of range"]],
                         capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode == 2 and out.stdout == "" and time.monotonic() - began < 5
    assert out.stderr.splitlines() == ["error: --listen 127.0.0.1:99999: port 99999 is out of range (0 to 65535; 0 picks a free one)"]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def temp_folders(tmp: Path, pid: int) -> list[Path]:
    return list(tmp.glob(f"{TEMP_PREFIX}{pid}-*"))


@pytest.mark.parametrize("how", ["shutdown", "SIGTERM", "SIGHUP"])
def test_stopping_during_a_generate_exits_0_and_leaves_nothing(tiny_model_dir, tmp_path, how):
    """No --session-dir: the engine's temporary folder has its pid in its name, stale ones (a dead pid)
    are swept at start, and the socket and its own folder are gone after any clean stop."""
    tmp = tmp_path / "tmp"
    stale, alive = tmp / f"{TEMP_PREFIX}{dead_pid()}-killed", tmp / f"{TEMP_PREFIX}{os.getpid()}-running"
    for folder in (stale / "versions", alive):
        folder.mkdir(parents=True)
    sock = tmp_path / "e.sock"
    proc, _ = spawn(tiny_model_dir, tmp_path, "--socket", str(sock), session=False, env={**ENV, "TMPDIR": str(tmp)})
    try:
        own, = temp_folders(tmp, proc.pid)
        assert not stale.exists() and alive.exists() and (own / "versions").is_dir()
        conn = Lines.unix(str(sock))
        conn.send({"type": "generate", "id": "g", "messages": HI, "max_new_tokens": 4000, "temperature": 1.0})
        assert [conn.recv()["type"] for _ in range(3)] == ["token"] * 3
        if how == "shutdown":
            conn.send({"type": "shutdown", "id": "x"})
        else:
            proc.send_signal(getattr(signal, how))
        assert proc.wait(30) == 0
    finally:
        stop(proc)
    assert not sock.exists() and not own.exists() and alive.exists()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in stderr and "terminate called" not in stderr
    if how != "shutdown":
        assert f"engine: {how}: shutting down" in stderr


def test_a_signal_while_the_model_loads_exits_0_and_removes_the_folder(tiny_model_dir, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--model", str(tiny_model_dir), "--device", "cpu",
                             "--socket", str(tmp_path / "e.sock")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**ENV, "TMPDIR": str(tmp)})
    deadline = time.monotonic() + 30
    while not temp_folders(tmp, proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert temp_folders(tmp, proc.pid), "the engine made no temporary folder"
    proc.send_signal(signal.SIGTERM)  # torch is still importing, or the model loading
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == "" and err.strip().splitlines() == ["engine: SIGTERM: shutting down"]
    assert not temp_folders(tmp, proc.pid) and not (tmp_path / "e.sock").exists()


def test_prefill_runs_in_chunks_each_a_step(tiny_policy, monkeypatch):
    model, tokenizer = tiny_policy
    long = [{"role": "user", "content": "Tell me about the sea, the wide sea, the deep sea. " * 20}]
    whole = generation.generate(model, tokenizer, long, n=2, max_new_tokens=5, temperature=0)
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 64)
    gen = Generation(model, tokenizer, long, n=2, max_new_tokens=5, temperature=0)
    chunks = -(-len(gen.prompt_ids) // 64)
    assert chunks >= 4
    assert next(gen) == [] and gen.cache.get_seq_length() == 64  # control comes back after one chunk
    for _ in gen:
        pass
    assert [r["text"] for r in gen.results()] == [r["text"] for r in whole]  # chunking changes no logit
    cancelled = Generation(model, tokenizer, long, n=2, max_new_tokens=5)
    next(cancelled)
    cancelled.cancel()  # mid-prompt: what a cancel or a shutdown does between two chunks
    assert [r["finish_reason"] for r in cancelled.results()] == ["cancelled"] * 2


def test_a_version_is_fsynced_before_its_rename_and_the_rename_after(tiny_policy, tmp_path, monkeypatch):
    import engine.versions as vs

    model, _ = tiny_policy
    folder = vs.version_dir(tmp_path / "versions", 1)
    synced = []
    real = os.fsync

    def recording(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), folder.exists()))
        real(fd)

    monkeypatch.setattr(vs.os, "fsync", recording)
    vs.save_adapter(model, folder, metadata={"method": "dpo"})
    partial = f"{folder}.partial"
    before = {path for path, renamed in synced if not renamed}
    assert before == {partial, *(f"{partial}/{p.name}" for p in folder.iterdir())}
    assert synced[-1] == (str(folder.parent), True)  # the rename reaches the disk too
