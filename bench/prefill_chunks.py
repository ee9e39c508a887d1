"""A long prompt on the default model: the prefill's cost by chunk size, and how long a shutdown
takes when it arrives in the middle of one (issue 16).

    flock /tmp/bench.lock .venv/bin/python bench/prefill_chunks.py [--tokens 2000] [--threads 1]

Part 1 runs engine.generation in-process: the whole prefill of one prompt, and its longest
step (what a cancel or a shutdown waits for), for several chunk sizes. Part 2 starts the real
engine, sends a 1 MB prompt and a prompt over the context (both refused at once), then a prompt
of ~7,600 tokens, and a `shutdown` 3 s into its prefill: the exit code and the time to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = "The sea is wide and deep and full of life. "  # ~11 tokens


def chunk_sizes(tokens: int, threads: int) -> None:
    import torch

    import engine.generation as generation
    from engine.models import load_model

    torch.set_num_threads(threads)
    model, tokenizer = load_model(None, device="cpu")
    messages = [{"role": "user", "content": SENTENCE * (tokens // 11)}]
    print("| chunk | prompt tokens | whole prefill s | longest step s |\n|---|---|---|---|")
    for chunk in (tokens + 64, 512, 256, 128):
        generation.PREFILL_CHUNK = chunk
        gen = generation.Generation(model, tokenizer, messages, n=1, max_new_tokens=1, temperature=0)
        began, steps = time.perf_counter(), []
        while gen.prefilled < len(gen.prompt_ids):
            step = time.perf_counter()
            next(gen)
            steps.append(time.perf_counter() - step)
        label = "none (one pass)" if chunk > tokens else chunk
        print(f"| {label} | {len(gen.prompt_ids)} | {time.perf_counter() - began:.2f} | {max(steps):.2f} |", flush=True)


def shutdown_mid_prefill(threads: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="prefill-bench-"))
    sock = folder / "e.sock"
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", "--socket", str(sock), "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=open(folder / "stderr.txt", "w"), text=True)
    assert proc.stdout.readline().startswith("ready ")
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(str(sock))
    lines = conn.makefile("rwb")

    def ask(message: dict) -> tuple[dict, float]:
        began = time.monotonic()
        lines.write(json.dumps(message).encode() + b"\n")
        lines.flush()
        while True:
            event = json.loads(lines.readline())
            if event["id"] == message["id"] and event["type"] in ("done", "error"):
                return event, time.monotonic() - began

    for id_, content in (("1MB", "a " * 500_000), ("over", "The sea is wide. " * 2000)):
        event, seconds = ask({"type": "generate", "id": id_, "messages": [{"role": "user", "content": content}]})
        print(f"- {id_} prompt: {event['code']} in {seconds:.3f} s: {event['message']}")
    lines.write(json.dumps({"type": "generate", "id": "long", "max_new_tokens": 2,
                            "messages": [{"role": "user", "content": SENTENCE * 690}]}).encode() + b"\n")
    lines.flush()
    time.sleep(3)
    status, _ = ask({"type": "status", "id": "st"})
    began = time.monotonic()
    ask({"type": "shutdown", "id": "x"})
    code = proc.wait(300)
    print(f"- shutdown 3 s into a ~7,600-token prefill (running: {status['jobs']}): exit {code} after "
          f"{time.monotonic() - began:.2f} s; socket left: {sock.exists()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="Prompt tokens for the chunk-size table.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads (the engine's default on 2 cores).")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    chunk_sizes(args.tokens, args.threads)
    shutdown_mid_prefill(args.threads)


if __name__ == "__main__":
    main()
