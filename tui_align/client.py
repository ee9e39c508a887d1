"""EngineClient: start or reach the engine process and talk to it without blocking asyncio.

Pure asyncio (subprocess, Unix or TCP stream); imports only engine.protocol, never torch.
Requests are multiplexed by id: a generate can stream while an update is running. If the
engine dies, every pending call raises EngineDied (with its exit code and the tail of its
stderr) and `restart()` starts a new engine on the same session folder, at `start_version`
(the constructor's `version`: a saved version, 0 the base; None: the latest saved one).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from engine.protocol import PROTOCOL_VERSION, encode

LINE_LIMIT = 64 * 1024 * 1024
STDERR_LINES = 200
ERROR_LINE = re.compile(r"error\b|(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b")  # `error: ...`, `ValueError: ...`


def describe(exc: BaseException) -> str:
    """An engine error or an OSError as one line: its message."""
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def last_error(stderr_tail: str) -> str:
    """The engine's stderr line that says what went wrong: its `error: ...` line or an exception's last
    line; else the last line that is neither a warning nor the source line a warning quotes."""
    lines = [line.rstrip() for line in stderr_tail.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    plain = [line for line in lines if not line[0].isspace() and "Warning" not in line]
    return (errors or plain or [""])[-1].strip()


class EngineDied(Exception):
    """The engine process exited (or its connection closed) while requests were pending."""

    def __init__(self, returncode: int | None, stderr_tail: str = "", reason: str = ""):
        self.returncode, self.stderr_tail = returncode, stderr_tail
        self.error = last_error(stderr_tail)
        what = reason or (f"engine exited with code {returncode}" if returncode is not None else "engine connection closed")
        super().__init__(f"{what}{': ' + self.error if self.error else ''}")


class EngineError(Exception):
    """An `error` event from the engine: `.code` (docs/protocol.md) and `.message`."""

    def __init__(self, code: str, message: str):
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")


class EngineClient:
    def __init__(self, model: str | None = None, method: str = "dpo", session_dir: str | Path | None = None,
                 device: str = "auto", dtype: str = "auto", python: str = sys.executable,
                 env: dict | None = None, extra_args: list[str] | None = None, version: int | None = None,
                 nice: int = 0):
        self.model, self.method, self.device, self.dtype, self.python = model, method, device, dtype, python
        self.session_dir = Path(session_dir) if session_dir is not None else None
        self.env, self.extra_args = env, list(extra_args or [])
        self.start_version = version  # where start()/restart() begin; callers may move it (e.g. after a rollback)
        self.nice = nice  # added to the spawned engine's niceness, so it yields the CPU to the screen
        self.pid: int | None = None  # the engine's process id (spawned, or reported by hello)
        self.info: dict = {}
        self.version = 0
        self.returncode: int | None = None
        self.ready_line = ""
        self.ready_seconds: float | None = None  # spawn to ready line, of the last start()
        self.unrouted: deque = deque(maxlen=50)  # events for no pending request (e.g. errors with id "")
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tmp: str | None = None
        self._pending: dict[str, asyncio.Queue] = {}
        self._generating: set[str] = set()
        self._ids = itertools.count(1)
        self._stderr: deque = deque(maxlen=STDERR_LINES)
        self._tasks: list[asyncio.Task] = []
        self._dead: EngineDied | None = None
        self._connect_args: dict | None = None
        self._refusal = ""
        self._epoch = 0  # bumped by every start/connect: late news about an old engine is ignored

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        running = self._proc is None or self._proc.returncode is None
        return self._writer is not None and self._dead is None and running

    @property
    def stderr_tail(self) -> str:
        return "\n".join(list(self._stderr)[-20:])

    async def start(self) -> dict:
        """Spawn `python -m engine serve` on a private socket, wait for its ready line, say hello."""
        self._reset()
        self._connect_args = None
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="tui-align-")
        if self.session_dir is None:
            self.session_dir = Path(self._tmp) / "session"
        socket_path = os.path.join(self._tmp, "engine.sock")
        args = [self.python, "-m", "engine", "serve", "--socket", socket_path, "--session-dir", str(self.session_dir),
                "--method", self.method, "--device", self.device, "--dtype", self.dtype, "--watch-stdin", *self.extra_args]
        if self.model:
            args += ["--model", str(self.model)]
        if self.start_version is not None:
            args += ["--version", str(self.start_version)]
        env = {**os.environ, **(self.env or {})}
        spawned = asyncio.get_running_loop().time()
        self._proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, limit=LINE_LIMIT,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)  # in the child, before exec
        self.pid = self._proc.pid
        self._spawn(self._pump_stderr(self._proc))
        while True:  # the ready line; anything else on stdout before it is ignored
            line = await self._proc.stdout.readline()
            if not line:
                rc = await self._proc.wait()
                self.returncode = rc
                await asyncio.sleep(0.05)  # let the stderr pump catch the last lines
                raise EngineDied(rc, self.stderr_tail, f"engine exited with code {rc} before it was ready")
            if line.startswith(b"ready "):
                self.ready_line = line.decode().strip()
                self.ready_seconds = asyncio.get_running_loop().time() - spawned
                break
        self._spawn(self._drain(self._proc.stdout))
        self._spawn(self._watch(self._proc, self._epoch))
        self._reader, self._writer = await asyncio.open_unix_connection(socket_path, limit=LINE_LIMIT)
        self._spawn(self._read(self._reader, self._epoch))
        return await self.hello()

    async def connect(self, socket_path: str | None = None, host: str | None = None, port: int | None = None,
                      token: str | None = None) -> dict:
        """Reach an engine that is already running (Unix socket, or loopback TCP with its token)."""
        self._reset()
        self._connect_args = dict(socket_path=socket_path, host=host, port=port, token=token)
        if socket_path:
            self._reader, self._writer = await asyncio.open_unix_connection(socket_path, limit=LINE_LIMIT)
        else:
            self._reader, self._writer = await asyncio.open_connection(host or "127.0.0.1", port, limit=LINE_LIMIT)
        self._spawn(self._read(self._reader, self._epoch))
        return await self.hello(token)

    async def restart(self) -> dict:
        """A new engine (or connection) after a death; a spawned one starts at `start_version`."""
        if self.alive and self._proc is not None:
            await self.shutdown()
        await self._stop_process()
        if self._connect_args is not None:
            return await self.connect(**self._connect_args)
        return await self.start()

    async def shutdown(self) -> None:
        """Ask the engine to exit and wait for it (killing it if it does not go within 10 s)."""
        if self.alive:
            with contextlib.suppress(EngineDied, EngineError, asyncio.TimeoutError):
                await asyncio.wait_for(self._call("shutdown"), 10)
        await self._stop_process()

    async def close(self) -> None:
        """Shut down an engine we started, close the connection, remove the temporary folder."""
        if self._proc is not None:
            await self.shutdown()
        await self._close_connection()
        for task in self._tasks:
            task.cancel()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- requests ------------------------------------------------------------------------

    async def hello(self, token: str | None = None) -> dict:
        self.info = await self._call("hello", **({"token": token} if token else {}))
        self.version = self.info.get("version", self.version)
        self.pid = self.info.get("pid", self.pid)
        return self.info

    async def generate(self, messages: list[dict], n: int = 2, max_new_tokens: int = 128, temperature: float = 0.8,
                       top_p: float = 0.95, seed: int | None = None, version: int | None = None) -> AsyncIterator[dict]:
        """Yield `token` events ({candidate, text}) as they come, then the `done` event. `version`: sample
        with that saved version's adapter (the live one stays live)."""
        id_, queue = self._open("generate")
        self._generating.add(id_)
        finished = False
        try:
            await self._send("generate", id_, messages=messages, n=n, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, seed=seed,
                             **({"version": version} if version is not None else {}))
            while True:
                event = await self._next(id_, queue)
                if event["type"] == "done":
                    finished = True
                    yield event
                    return
                yield event
        finally:
            self._generating.discard(id_)
            if not finished and self.alive and id_ in self._pending:  # the caller stopped reading early
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().create_task(self._abandon(id_))
            elif finished:
                self._pending.pop(id_, None)

    async def score_reference(self, examples: list[dict]) -> list[dict]:
        return (await self._call("score_reference", examples=examples))["examples"]

    async def update(self, method: str, examples: list[dict], hyperparameters: dict | None = None,
                     on_progress: Callable[[dict], object] | None = None) -> dict:
        done = await self._call("update", on_progress=on_progress, method=method, examples=examples,
                                hyperparameters=hyperparameters or {})
        self.version = done["version"]
        return done

    async def versions(self) -> list[dict]:
        return (await self._call("versions"))["versions"]

    async def rollback(self, version: int) -> dict:
        done = await self._call("rollback", version=version)
        self.version = done["version"]
        return done

    async def save(self, path: str, merge: bool = False) -> dict:
        return await self._call("save", path=str(path), merge=merge)

    async def status(self) -> dict:
        status = await self._call("status")
        self.version = status.get("version", self.version)
        return status

    async def cancel(self, request_id: str | None = None) -> None:
        """Stop a request (by id; None: every running generate); its own `done` follows."""
        await self._call("cancel", target=request_id or "")

    # --- plumbing ------------------------------------------------------------------------

    def _open(self, kind: str) -> tuple[str, asyncio.Queue]:
        if self._dead is not None:
            raise self._dead
        if self._writer is None:
            raise EngineDied(None, self.stderr_tail, "engine not started: call start() or connect()")
        id_ = f"{kind[:3]}{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[id_] = queue
        return id_, queue

    async def _send(self, type_: str, id_: str, **payload) -> None:
        try:
            self._writer.write(encode(type_, id_, **payload))
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            await self._lost(self._epoch)
            raise self._dead or EngineDied(self.returncode, self.stderr_tail) from None

    async def _next(self, id_: str, queue: asyncio.Queue) -> dict:
        event = await queue.get()
        if isinstance(event, EngineDied):
            self._pending.pop(id_, None)
            raise event
        if event["type"] == "error":
            self._pending.pop(id_, None)
            raise EngineError(event.get("code", "error"), event.get("message", ""))
        return event

    async def _call(self, type_: str, on_progress=None, **payload) -> dict:
        """Send one request and wait for its `done` (progress events go to on_progress)."""
        id_, queue = self._open(type_)
        try:
            await self._send(type_, id_, **payload)
            while True:
                event = await self._next(id_, queue)
                if event["type"] == "done":
                    return {k: v for k, v in event.items() if k not in ("type", "id", "v")}
                if event["type"] == "progress" and on_progress is not None:
                    result = on_progress(event)
                    if asyncio.iscoroutine(result):
                        await result
        finally:
            self._pending.pop(id_, None)

    async def _abandon(self, id_: str) -> None:
        """A generate whose reader went away: cancel it and swallow its remaining events."""
        with contextlib.suppress(EngineDied, EngineError):
            await self._call("cancel", target=id_)
        self._pending.pop(id_, None)

    async def _read(self, reader: asyncio.StreamReader, epoch: int) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                queue = self._pending.get(str(event.get("id", "")))
                if queue is not None:
                    queue.put_nowait(event)
                else:
                    self.unrouted.append(event)
                    if event.get("type") == "error" and event.get("code") == "busy":
                        self._refusal = f"engine refused the connection: {event.get('message', 'busy')}"
        except (ConnectionError, OSError, ValueError):
            pass
        await self._lost(epoch)

    async def _lost(self, epoch: int) -> None:
        """The connection ended: find out why, then fail every pending request."""
        if self._dead is not None or epoch != self._epoch:
            return
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 3)
            self.returncode = proc.returncode
            await asyncio.sleep(0.05)  # the last stderr lines
        if self._dead is not None or epoch != self._epoch:
            return
        self._dead = EngineDied(self.returncode, self.stderr_tail, self._refusal)
        for queue in self._pending.values():
            queue.put_nowait(self._dead)

    async def _watch(self, proc, epoch: int) -> None:
        await proc.wait()
        if epoch == self._epoch:
            self.returncode = proc.returncode
            await self._lost(epoch)

    async def _pump_stderr(self, proc) -> None:
        while True:
            line = await proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode(errors="replace").rstrip())

    async def _drain(self, stream) -> None:
        while await stream.readline():
            pass

    def _spawn(self, coro) -> None:
        self._tasks = [t for t in self._tasks if not t.done()] + [asyncio.get_running_loop().create_task(coro)]

    def _reset(self) -> None:
        # A request to the old engine must not wait forever: its death may have been seen (alive is False) before
        # _lost() ran, and _lost() ignores an old epoch.
        stale = self._dead or EngineDied(self.returncode, self.stderr_tail, "the engine was restarted")
        for queue in self._pending.values():
            queue.put_nowait(stale)
        self._refusal = ""
        self._epoch += 1
        self._dead = None
        self.returncode = None
        self._pending.clear()
        self._generating.clear()

    async def _close_connection(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _stop_process(self) -> None:
        await self._close_connection()
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()  # --watch-stdin: the engine exits on EOF even if shutdown was not heard
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if proc is not None:
            self.returncode = proc.returncode
        self._proc = None


__all__ = ["EngineClient", "EngineDied", "EngineError", "PROTOCOL_VERSION"]
