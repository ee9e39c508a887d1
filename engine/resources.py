"""The engine process's share of the machine: torch's threads and the heap's free pages.

In engine.TORCH_FREE (the TUI reads pid_alive): only peak_memory imports torch, inside itself.
"""

from __future__ import annotations

import os

from engine.protocol import UserError


def engine_threads(requested: int | None = None) -> int:
    """Torch's intra-op threads for the engine: `requested`, or all usable cores but one.

    The spare core is for the engine's event loop and the TUI. A live step is small: on the
    2-core CPU of bench/RESULTS.md, one thread decoded two candidates ~2x faster than two
    threads that sleep and wake around every op (OMP_WAIT_POLICY=PASSIVE, needed so that
    idle threads never spin on a shared core), and ran a one-pair update faster too.
    """
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested}: must be at least 1")
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts): a folder named after a
    dead pid is a killed run's leftover."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def peak_memory() -> dict:
    """The engine's peak memory so far: resident set (bytes) and accelerator memory (bytes; null on a CPU)."""
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"peak_rss_bytes": rss, "peak_accelerator_bytes": cuda}


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc only; elsewhere a no-op).

    A training step allocates and frees gigabytes of activations; glibc keeps most of it
    mapped, so without this an engine grew to ~3 GB of idle RSS after a few updates. The
    server calls it when the engine has been idle a while, not after every update: the next
    step would fault the pages back in (~70 ms of a 0.5 s one-pair update).
    """
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
