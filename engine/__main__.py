"""`python -m engine serve ...`: the engine process (same options as `tui-align engine serve`)."""

from __future__ import annotations

import argparse
import os
import sys

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine
# whose cores are shared (the TUI, other jobs), spinning threads slowed generation 20x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m engine", description="The tui-align engine process.")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Load the model once and serve clients (docs/protocol.md).")
    serve.add_argument("--model", default=None, help="Model folder, GGUF file or hub id (default: SmolLM2-135M-Instruct).")
    serve.add_argument("--method", default="dpo", choices=["dpo", "sft", "ppo"], help="Default update method.")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", default=None, help="Unix socket path, created 0600 (default ./engine.sock).")
    where.add_argument("--listen", default=None, help="HOST:PORT on loopback (TCP; needs --token-file). Port 0 picks one.")
    serve.add_argument("--token-file", default=None, help="File holding the token clients must send in hello.")
    serve.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="Where the model runs.")
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="Weight dtype.")
    serve.add_argument("--session-dir", default=None, help="Session folder: versions go to SESSION/versions/vNNNN; "
                                                          "an engine started on it resumes at its latest version.")
    serve.add_argument("--version", type=int, default=None,
                       help="Start at this saved version of --session-dir (0: the base model; default: the latest).")
    serve.add_argument("--watch-stdin", action="store_true",
                       help="Exit when stdin closes (the client that spawned the engine has gone).")
    serve.add_argument("--threads", type=int, default=None,
                       help="Torch threads for model work (default: all cores but one, left for the event loop and the TUI).")
    serve.add_argument("--lora-r", type=int, default=16, help="LoRA rank of the live adapter.")
    serve.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha of the live adapter.")
    return root


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    args.pop("command")
    from engine.server import ServeOptions, main as serve_main

    return serve_main(ServeOptions(**args))


if __name__ == "__main__":
    sys.exit(main())
