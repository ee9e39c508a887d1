"""The engine process: load the model once, then serve one client at a time.

Transport: newline-delimited JSON (engine/protocol.py, docs/protocol.md) over a Unix
socket created 0600, or TCP on loopback with a token. The asyncio loop only reads,
validates and answers cheap requests; everything that touches the model is a job for the
scheduler's single worker thread, whose events come back to the loop thread-safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.options import ServeOptions, check_options
from engine.protocol import (PROTOCOL_VERSION, REQUESTS, Cancelled, DataError, ModelError, NonFiniteLoss,
                             NotAvailable, ProtocolError, UserError, decode, encode, parse_request)
from engine.resources import peak_memory, trim_heap
from engine.scheduler import GENERATE, OTHER, REFERENCE, Job, Scheduler

if TYPE_CHECKING:
    from engine.live import LiveEngine

LINE_LIMIT = 64 * 1024 * 1024  # one message; updates carry whole conversations
HELLO_DEADLINE_S = 5.0  # an engine with a token closes a connection that has not authenticated by then
CLOSE_DEADLINE_S = 2.0  # at shutdown, for the client to take what is still buffered for it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # each one is a shutdown (tmux sends SIGHUP)
TEMP_PREFIX = "tui-align-engine-"  # + pid + "-": the session folder of an engine started without one


class Connection:
    def __init__(self, reader, writer, loop):
        self.reader, self.writer, self.loop = reader, writer, loop
        self.closed = False

    def send(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    def send_threadsafe(self, data: bytes) -> None:
        try:
            self.loop.call_soon_threadsafe(self.send, data)
        except RuntimeError:  # the loop has closed: the engine is shutting down
            pass

    def error(self, id_: str, code: str, message: str) -> None:
        self.send(encode("error", id_, code=code, message=message))

    async def close(self) -> None:
        self.closed = True
        try:
            self.writer.close()
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class Server:
    def __init__(self, engine: LiveEngine, token: str | None):
        self.engine, self.token = engine, token
        self.scheduler = Scheduler(self._job_failed, on_idle=trim_heap)
        engine.generate_waiting = lambda: self.scheduler.waiting(GENERATE)
        self.client: Connection | None = None
        self.stopped = asyncio.Event()

    # --- connections -------------------------------------------------------------------

    async def handle(self, reader, writer) -> None:
        conn = Connection(reader, writer, asyncio.get_running_loop())
        hello = None
        if self.token is not None:
            hello = await self.authenticate(conn)
            if hello is None:  # it never held the client slot
                await conn.close()
                return
        for _ in range(20):  # a client that just reconnected: let its old connection finish closing
            if self.client is None or self.client.closed:
                break
            await asyncio.sleep(0.05)
        if self.client is not None:
            conn.error("", "busy", "another client is connected; the engine serves one at a time")
            await conn.close()
            return
        self.client = conn
        try:
            if hello is not None:
                await self.dispatch(conn, hello)
            while not conn.closed:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than LINE_LIMIT: the stream cannot be resynchronised
                    conn.error("", "bad_request", f"message longer than {LINE_LIMIT} bytes; closing")
                    break
                except (ConnectionError, OSError):
                    break
                if not line:
                    break
                if line.strip():
                    await self.dispatch(conn, line)
                    await writer.drain()
        finally:
            self.scheduler.cancel(None, kinds=("generate", "score_reference"), conn=conn)
            if self.client is conn:
                self.client = None
            await conn.close()

    async def authenticate(self, conn: Connection) -> bytes | None:
        """The first line, if it is a hello with the token; else None, answered `unauthorized`.

        Before this no slot is taken, so a connection that sends nothing cannot lock the owner out."""
        id_, why = "", "send hello with the engine's token first; closing"
        try:
            line = await asyncio.wait_for(conn.reader.readline(), HELLO_DEADLINE_S)
            message = decode(line)
            id_ = "" if message.get("id") is None else str(message["id"])
            given = message.get("token") if message["type"] == "hello" else None
            if isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode()):
                return line
        except asyncio.TimeoutError:
            why = f"no hello with the engine's token within {HELLO_DEADLINE_S:g} s; closing"
        except (ProtocolError, ValueError, ConnectionError, OSError):  # malformed, too long, gone
            pass
        conn.error(id_, "unauthorized", why)
        with contextlib.suppress(ConnectionError, OSError):
            await conn.writer.drain()
        return None

    async def dispatch(self, conn: Connection, line: bytes) -> None:
        try:
            message = decode(line)
        except ProtocolError as exc:
            conn.error("", "bad_request", str(exc))
            return
        id_ = "" if message.get("id") is None else str(message["id"])
        if message["type"] not in REQUESTS:
            conn.error(id_, "unknown_type", f"unknown request type {message['type']!r}; "
                                            f"known: {', '.join(REQUESTS)}")
            return
        try:
            request = parse_request(message)
            getattr(self, "on_" + message["type"])(conn, id_, request)
        except (ProtocolError, UserError) as exc:
            conn.error(id_, "bad_request", str(exc))
        except NotAvailable as exc:
            conn.error(id_, "not_available", str(exc))

    # --- requests ----------------------------------------------------------------------

    def on_hello(self, conn, id_, req) -> None:
        conn.send(encode("done", id_, **self.engine.hello()))

    def on_generate(self, conn, id_, req) -> None:
        self.engine.check_generate(req)
        job = Job(id_, "generate", GENERATE, conn)
        self.scheduler.submit(job, self.engine.generate_job(job, req, self._emitter(job), time.perf_counter()))

    def on_score_reference(self, conn, id_, req) -> None:
        rows = self.engine.check_examples("dpo", req.examples)
        job = Job(id_, "score_reference", REFERENCE, conn)
        self.scheduler.submit(job, self.engine.score_reference_job(job, rows, self._emitter(job)))

    def on_update(self, conn, id_, req) -> None:
        method = req.method or self.engine.options.method
        rows = self.engine.check_examples(method, req.examples)
        config, steps = self.engine.check_hyperparameters(method, req.hyperparameters or {})
        job = Job(id_, "update", OTHER, conn)
        self.scheduler.submit(job, self.engine.update_job(job, method, rows, config, steps, self._emitter(job)))

    def on_versions(self, conn, id_, req) -> None:
        conn.send(encode("done", id_, versions=self.engine.versions(), current=self.engine.version))

    def on_rollback(self, conn, id_, req) -> None:
        self.engine.check_rollback(req.version)
        job = Job(id_, "rollback", OTHER, conn)
        self.scheduler.submit(job, self.engine.rollback_job(job, req.version, self._emitter(job)))

    def on_save(self, conn, id_, req) -> None:
        if not req.path:
            raise DataError("save: path is empty")
        job = Job(id_, "save", OTHER, conn)
        self.scheduler.submit(job, self.engine.save_job(job, req.path, req.merge, self._emitter(job)))

    def on_status(self, conn, id_, req) -> None:
        engine = self.engine
        conn.send(encode("done", id_, version=engine.version, method=engine.options.method, device=engine.device,
                         dtype=engine.dtype, jobs=self.scheduler.snapshot(), session_dir=str(engine.session_dir),
                         uptime_s=round(time.time() - engine.started, 3), **peak_memory()))

    def on_cancel(self, conn, id_, req) -> None:
        kinds = ("generate", "update", "score_reference") if req.target else ("generate",)
        cancelled = self.scheduler.cancel(req.target or None, kinds=kinds, conn=conn)
        conn.send(encode("done", id_, cancelled=cancelled))

    def on_shutdown(self, conn, id_, req) -> None:
        conn.send(encode("done", id_))
        self.stopped.set()

    # --- plumbing ----------------------------------------------------------------------

    def _emitter(self, job: Job):
        def emit(type_: str, **payload) -> None:
            job.conn.send_threadsafe(encode(type_, job.id, **payload))
        return emit

    def _job_failed(self, job: Job, exc: BaseException) -> None:
        """Worker thread: a job raised; tell its client, keep serving."""
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            code, message = "out_of_memory", f"out of memory during {job.kind}: {_first_line(exc)}"
        elif isinstance(exc, NonFiniteLoss):
            code, message = "non_finite_loss", f"{exc} (version {self.engine.version} stays active)"
        elif isinstance(exc, Cancelled):
            code, message = "cancelled", str(exc)
        elif isinstance(exc, NotAvailable):
            code, message = "not_available", str(exc)
        elif isinstance(exc, UserError | ValueError | KeyError | TypeError):
            code, message = "bad_request", f"{job.kind}: {_first_line(exc)}"
        else:
            code, message = "model_error", f"{job.kind}: {type(exc).__name__}: {_first_line(exc)}"
        print(f"engine: {job.kind} {job.id} failed: {code}: {message}", file=sys.stderr, flush=True)
        job.conn.send_threadsafe(encode("error", job.id, code=code, message=message))

    async def run(self, socket_path: str | None, address: tuple[str, int] | None, watch_stdin: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        if watch_stdin:  # an orphaned engine would hold its memory forever
            threading.Thread(target=_until_eof, args=(loop, self.stopped), daemon=True).start()
        if socket_path:
            if os.path.exists(socket_path):
                os.unlink(socket_path)  # a stale socket from a killed engine
            old = os.umask(0o177)  # the socket exists 0600 from its first instant
            try:
                server = await asyncio.start_unix_server(self.handle, socket_path, limit=LINE_LIMIT)
            finally:
                os.umask(old)
            os.chmod(socket_path, 0o600)
            where = f"socket={socket_path}"
        else:
            server = await asyncio.start_server(self.handle, address[0], address[1], limit=LINE_LIMIT)
            host, port = server.sockets[0].getsockname()[:2]
            where = f"listen={host}:{port}"
        print(f"ready {where} version={self.engine.version} protocol={PROTOCOL_VERSION} pid={os.getpid()}", flush=True)
        try:
            await self.stopped.wait()
        finally:
            server.close()
            if socket_path and os.path.exists(socket_path):
                os.unlink(socket_path)
            if self.client is not None:  # a client that stopped reading must not hold the exit up
                with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
                    await asyncio.wait_for(self.client.writer.drain(), CLOSE_DEADLINE_S)
                await self.client.close()
            await loop.run_in_executor(None, self.scheduler.stop)

    def _on_signal(self, sig: signal.Signals) -> None:
        print(f"engine: {sig.name}: shutting down", file=sys.stderr, flush=True)
        self.stopped.set()


class Stopped(BaseException):
    """A stop signal that came before the event loop took the signals over (while the model loads)."""


def _stop_now(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


def serve(options: ServeOptions) -> None:
    """Check the options, load the model, print the ready line, serve until shutdown or a stop signal."""
    transport = check_options(options)
    for sig in STOP_SIGNALS:  # the event loop handles them once it runs; loading the model takes a while
        signal.signal(sig, _stop_now)
    temp = None
    if options.session_dir is None:
        sweep_temp_folders()
        temp = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        options = replace(options, session_dir=temp)
    server = None
    try:
        from engine.live import LiveEngine  # torch takes seconds to import: only once the options are good

        server = Server(LiveEngine(options), transport.token)
        asyncio.run(server.run(transport.socket_path, transport.address, options.watch_stdin))
    except Stopped as exc:
        print(f"engine: {exc}: shutting down", file=sys.stderr, flush=True)
    finally:
        for sig in STOP_SIGNALS:  # already on the way out: a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    if server is not None and server.scheduler.thread.is_alive():
        # The worker is inside one long torch call; interpreter shutdown under it aborts (SIGABRT).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(options: ServeOptions) -> int:
    """Run `serve`, turning user errors into one line on stderr and exit code 2."""
    try:
        serve(options)
    except (UserError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def sweep_temp_folders() -> None:
    """Remove the temporary session folders of engines that were killed (the pid in the name is gone)."""
    for path in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):
        pid = path.name[len(TEMP_PREFIX):].split("-")[0]
        try:
            info = path.lstat()
        except OSError:
            continue
        mine = info.st_uid == os.getuid() and stat.S_ISDIR(info.st_mode)  # never another user's, nor a link
        if mine and pid.isdigit() and int(pid) > 0 and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _until_eof(loop, stopped: asyncio.Event) -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    loop.call_soon_threadsafe(stopped.set)
    try:  # stderr is most likely a broken pipe too
        print("engine: stdin closed (the client is gone): shutting down", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
