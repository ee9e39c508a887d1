"""A real engine process for tests (tests/fakes.py has the fake one): start and stop it, and a bare line client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tui_align.client import EngineClient

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
HI = [{"role": "user", "content": "Hi"}]
PAIR = {"prompt": HI, "chosen": "Hello! Nice to meet you.", "rejected": "Go away."}


def spawn(model_dir, folder: Path, *transport: str, session: bool = True, env: dict = ENV) -> tuple[subprocess.Popen, str]:
    """An engine on `model_dir`, its session in `folder`/session (`session=False`: none given), once it is ready."""
    args = [sys.executable, "-m", "engine", "serve", "--model", str(model_dir), "--device", "cpu",
            *(["--session-dir", str(folder / "session")] if session else []), *transport]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(folder / "stderr.txt", "w"), text=True, env=env)
    ready = proc.stdout.readline().strip()
    assert ready.startswith("ready "), (folder / "stderr.txt").read_text()[-2000:]
    return proc, ready


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


class Lines:
    """A bare line-by-line client: what the hidden protocol check does."""

    def __init__(self, sock: socket.socket):
        sock.settimeout(60)
        self.sock, self.file = sock, sock.makefile("rwb")

    @classmethod
    def unix(cls, path: str) -> Lines:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return cls(sock)

    def send(self, message) -> None:
        self.file.write((message if isinstance(message, str) else json.dumps(message)).encode() + b"\n")
        self.file.flush()

    def recv(self) -> dict | None:
        line = self.file.readline()
        return json.loads(line) if line else None

    def until(self, id_: str) -> list[dict]:
        events = []
        while True:
            event = self.recv()
            assert event is not None, f"connection closed before the end of {id_}: {events}"
            if event["id"] == id_:
                events.append(event)
                if event["type"] in ("done", "error"):
                    return events

    def ask(self, message: dict) -> dict:
        """Send a request; its last event (done or error)."""
        self.send(message)
        return self.until(message["id"])[-1]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


async def texts(client: EngineClient, seed: int = 11) -> list[str]:
    async for event in client.generate(HI, n=2, max_new_tokens=10, seed=seed):
        if event["type"] == "done":
            return [c["text"] for c in event["candidates"]]
