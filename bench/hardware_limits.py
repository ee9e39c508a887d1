"""The hardware's limits bench/scale.py compares against: memory-copy bandwidth (a torch tensor
copy) and matmul throughput (torch.mm), each the best of a few runs."""

from __future__ import annotations

import time


def best_seconds(run, device: str, repeats: int) -> float:
    """The fastest of `repeats` calls of `run` (after one untimed call), the device synchronised around each."""
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run()
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def copy_bandwidth(device: str, megabytes: int, repeats: int = 5) -> float:
    """Bytes per second moved by a tensor copy (read + write)."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / best_seconds(lambda: dst.copy_(src), device, repeats)


def matmul_throughput(device: str, dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in `dtype`."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), device, repeats)


def limits(device: str, dtype, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    return {"threads": threads, "bandwidth": copy_bandwidth(device, 2048 if gpu else 512),
            "matmul": matmul_throughput(device, dtype, 8192 if gpu else 1024)}
