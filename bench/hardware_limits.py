"""The hardware's limits bench/scale.py compares against: memory-copy bandwidth (a torch tensor
copy) and matmul throughput (torch.mm), each the best of a few runs; and the floor of one
decoding step, its matrix products alone (`linear_floor`)."""

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


def linear_floor(size: str, device: str, dtype, rows: int, pool_bytes: int = 256 * 2**20, repeats: int = 3) -> float:
    """Seconds for the matrix products alone of one decoding step with `rows` candidates: F.linear
    over every decoder matrix, as the model calls it, and the LM head as engine/generation.py
    multiplies it, the weights streaming from memory as in a step (a pool of whole layers larger
    than any cache, timed and scaled to the model's layer count). What the BLAS takes, with no
    Python, attention or sampling around it: the engine cannot decode faster than this."""
    import torch
    import torch.nn.functional as F

    from scale_models import config_of, kv_dim

    config = config_of(size)
    h, i, kv = config.hidden_size, config.intermediate_size, kv_dim(config)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # q k v o gate up down: [out, in]
    layer_bytes = sum(a * b for a, b in shapes) * dtype.itemsize
    layers = min(config.num_hidden_layers, max(1, -(-pool_bytes // layer_bytes)))
    pool = [torch.empty(shape, device=device, dtype=dtype).normal_() for _ in range(layers) for shape in shapes]
    head = torch.empty((config.vocab_size, h), device=device, dtype=dtype).normal_()
    x = {n: torch.randn(rows, n, device=device).to(dtype) for n in (h, i)}

    with torch.inference_mode():
        decoder = best_seconds(lambda: [F.linear(x[w.shape[1]], w) for w in pool], device, repeats)
        lm_head = best_seconds(lambda: torch.mm(head, x[h].t()), device, repeats)
    return decoder * config.num_hidden_layers / layers + lm_head


def limits(device: str, dtype, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    return {"threads": threads, "bandwidth": copy_bandwidth(device, 2048 if gpu else 512),
            "matmul": matmul_throughput(device, dtype, 8192 if gpu else 1024)}
