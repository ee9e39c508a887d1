"""Engine processes started, refused, orphaned, killed and restarted: transports and tokens, bad
options in one line, and resuming a session's versions (the requests one engine serves: test_engine_process.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.real_engine import ENV, HI, PAIR, Lines, spawn, stop, texts
from tui_align.client import EngineClient, EngineDied


def test_wrong_token_refused_on_tcp(tiny_model_dir, tmp_path):
    (tmp_path / "token").write_text("right-token\n")
    (tmp_path / "token").chmod(0o600)
    proc, ready = spawn(tiny_model_dir, tmp_path, "--listen", "127.0.0.1:0", "--token-file", str(tmp_path / "token"))
    try:
        port = int(re.search(r"listen=127\.0\.0\.1:(\d+)", ready).group(1))
        for first in [{"type": "hello", "id": "1", "token": "wrong-token"}, {"type": "status", "id": "2"},
                      {"type": "hello", "id": "3"}]:
            conn = Lines(socket.create_connection(("127.0.0.1", port)))
            conn.send(first)
            error = conn.recv()
            assert error["type"] == "error" and error["code"] == "unauthorized"
            assert conn.recv() is None  # closed
            conn.close()
        conn = Lines(socket.create_connection(("127.0.0.1", port)))
        assert conn.ask({"type": "hello", "id": "4", "token": "right-token"})["type"] == "done"
        assert conn.ask({"type": "status", "id": "5"})["type"] == "done"
        conn.close()
    finally:
        stop(proc)


def test_bad_transport_is_one_line_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "engine", "serve", "--listen", "0.0.0.0:9", "--token-file", "/nonexistent"],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith("error: --token-file") and len(out.stderr.strip().splitlines()) == 1
    (tmp_path / "t").write_text("x")
    (tmp_path / "t").chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "engine", "serve", "--listen", "0.0.0.0:9", "--token-file", str(tmp_path / "t")],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and "loopback" in out.stderr


async def test_an_engine_that_cannot_start_is_reported(tmp_path):
    client = EngineClient(model=str(tmp_path / "no-such-model"), device="cpu", env=ENV)
    with pytest.raises(EngineDied) as died:
        await client.start()
    assert died.value.returncode == 2 and "no such folder" in str(died.value)
    await client.close()


def test_cli_refuses_bad_flags_in_one_line():
    out = subprocess.run([str(Path(sys.executable).parent / "tui-align"), "engine", "serve", "--device", "tpu"],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 2 and out.stdout == ""
    line, = out.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: argument --device: invalid choice: 'tpu'") and "tui-align engine serve --help" in line


@pytest.mark.parametrize("options,message", [
    ({"loss_type": "sigmoid,kto"}, "error: --loss-type sigmoid,kto: unknown loss type 'kto'"),
    ({"loss_type": "ipo,sft", "loss_weights": "1"}, "error: --loss-weights has 1 weight(s) for 2 loss type(s)"),
])
def test_bad_loss_options_stop_the_engine_before_the_model_loads(tmp_path, monkeypatch, capsys, options, message):
    from engine.server import ServeOptions, main

    monkeypatch.chdir(tmp_path)  # the default socket's folder
    assert main(ServeOptions(model=str(tmp_path / "never-loaded"), **options)) == 2
    out = capsys.readouterr()
    line, = out.err.strip().splitlines()
    assert out.out == "" and line.startswith(message), line


def test_cli_serve_help_is_the_engine_parser():
    out = subprocess.run([str(Path(sys.executable).parent / "tui-align"), "engine", "serve", "--help"],
                         capture_output=True, text=True, env=ENV)
    assert out.returncode == 0 and out.stdout.startswith("usage: tui-align engine serve ")
    for option in ("--model", "--method {dpo,sft,ppo,kto,grpo}", "--socket", "--listen", "--token-file", "--device", "--dtype",
                   "--session-dir", "--version", "--watch-stdin", "--threads", "--lora-r", "--lora-alpha",
                   "--loss-type", "--loss-weights", "--label-smoothing"):
        assert option in out.stdout


def test_engine_exits_when_the_client_that_spawned_it_dies(tiny_model_dir, tmp_path):
    code = (
        "import asyncio, os, sys\n"
        "from tui_align.client import EngineClient\n"
        "async def main():\n"
        f"    c = EngineClient(model={str(tiny_model_dir)!r}, device='cpu')\n"
        "    info = await c.start()\n"
        "    print(info['pid'], flush=True)\n"
        "    os._exit(0)\n"  # dies without close() or shutdown
        "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    pid = int(out.stdout.strip())
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    pytest.fail("the orphaned engine kept running")


async def test_sigkill_is_detected_and_restart_resumes(tiny_model_dir, tmp_path):
    client = EngineClient(model=str(tiny_model_dir), session_dir=tmp_path / "session", device="cpu", env=ENV)
    try:
        await client.start()
        assert client.alive and client.version == 0
        await client.update("dpo", [PAIR], {"lr": 0.05})
        assert client.version == 1
        at_v1 = await texts(client)

        async def long_generate():
            async for _ in client.generate(HI, n=2, max_new_tokens=4000):
                pass

        pending = asyncio.create_task(long_generate())
        await asyncio.sleep(0.3)
        os.kill(client.info["pid"], signal.SIGKILL)
        with pytest.raises(EngineDied) as died:
            await asyncio.wait_for(pending, 30)
        assert died.value.returncode == -signal.SIGKILL and client.returncode == -signal.SIGKILL
        assert "Loading weights" not in client.stderr_tail  # a library's bar is no reason to show the person
        assert not client.alive
        with pytest.raises(EngineDied):
            await client.status()
        info = await client.restart()
        assert info["version"] == 1 and client.alive and info["pid"] != os.getpid()
        assert await texts(client) == at_v1
    finally:
        await client.close()
    assert not Path(client.info["session_dir"]).joinpath("..", "engine.sock").exists()


async def test_a_restart_right_after_a_death_fails_the_old_engines_requests(tiny_model_dir, tmp_path):
    """The views see a death (alive is False) before the client has failed the requests in flight; a restart
    in that gap must still end them, or the round waiting on one waits forever."""
    client = EngineClient(model=str(tiny_model_dir), session_dir=tmp_path / "session", device="cpu", env=ENV)
    try:
        await client.start()
        stream = client.generate(HI, n=2, max_new_tokens=4000)
        await stream.__anext__()  # the first token: the request is in flight
        os.kill(client.info["pid"], signal.SIGKILL)
        while client.alive:
            await asyncio.sleep(0)
        restarted = asyncio.create_task(client.restart())
        with pytest.raises(EngineDied):
            await asyncio.wait_for(anext_of(stream), 30)
        await restarted
        assert client.alive
    finally:
        await client.close()


async def anext_of(stream):
    async for _ in stream:
        pass


async def test_versions_after_a_rollback_and_starting_at_one(tiny_model_dir, tmp_path):
    """An update after a rollback writes the next free number; --version N starts there; nice applies."""
    client = EngineClient(model=str(tiny_model_dir), session_dir=tmp_path / "session", device="cpu", env=ENV, nice=5)
    try:
        await client.start()
        assert client.pid == client.info["pid"]
        assert os.getpriority(os.PRIO_PROCESS, client.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
        await client.update("dpo", [PAIR], {"lr": 0.05})
        at_v1 = await texts(client)
        await client.update("dpo", [PAIR], {"lr": 0.05})
        await client.rollback(1)
        assert (await client.update("dpo", [PAIR], {"lr": 0.05}))["version"] == 3  # v0002 is kept, not overwritten
        assert json.loads((tmp_path / "session/versions/v0003/metadata.json").read_text())["parent"] == 1
        client.start_version = 1
        info = await client.restart()
        assert info["version"] == 1 and " version=1 " in client.ready_line and await texts(client) == at_v1
        client.start_version = 9
        with pytest.raises(EngineDied) as died:
            await client.restart()
        assert died.value.returncode == 2 and "--version 9: no such version" in str(died.value)
    finally:
        await client.close()
