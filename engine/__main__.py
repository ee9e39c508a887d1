"""`python -m engine serve ...`: the engine process.

The one definition of the engine's options: `tui-align engine serve` hands its arguments
to `main` here (with its own `prog`). Imports nothing from tui_align.
"""

from __future__ import annotations

import argparse
import os
import sys

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine
# whose cores are shared (the TUI, other jobs), spinning threads slowed generation 20x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.protocol import LIVE_TRAINING, LOSS_TERMS, METHODS, REPORT_TO  # noqa: E402  (torch-free)


SERVE_HELP = "Load the model once, print one `ready ...` line on stdout, serve one client at a time (docs/protocol.md)."


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit 2 (`--help` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str = "python -m engine") -> argparse.ArgumentParser:
    root = _Parser(prog=prog, description="The tui-align engine process.")
    commands = root.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # No defaults here: an option left out is not passed, so ServeOptions (engine/options.py) holds each
    # default once.
    serve = commands.add_parser("serve", help=SERVE_HELP, description=SERVE_HELP, argument_default=argparse.SUPPRESS)
    serve.add_argument("--model", help="Model folder, GGUF file or hub id (default: SmolLM2-135M-Instruct).")
    serve.add_argument("--method", choices=METHODS, help="Default update method.")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", help="Unix socket path, created 0600 (default ./engine.sock).")
    where.add_argument("--listen", help="HOST:PORT on loopback (TCP; needs --token-file). Port 0 picks one.")
    serve.add_argument("--token-file", help="File holding the token clients must send in hello.")
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Where the model runs.")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], help="Weight dtype.")
    serve.add_argument("--session-dir", help="Session folder: versions go to SESSION/versions/vNNNN; "
                                                          "an engine started on it resumes at its latest version.")
    serve.add_argument("--version", type=int,
                       help="Start at this saved version of --session-dir (0: the base model; default: the latest).")
    serve.add_argument("--watch-stdin", action="store_true",
                       help="Exit when stdin closes (the client that spawned the engine has gone).")
    serve.add_argument("--threads", type=int,
                       help="Torch threads for model work (default: all cores but one, left for the event loop and the TUI).")
    serve.add_argument("--lora-r", type=int, help="LoRA rank of the live adapter (default 16).")
    serve.add_argument("--lora-alpha", type=int, help="LoRA alpha of the live adapter (default 32).")
    serve.add_argument("--report-to", choices=REPORT_TO,
                       help="Log each update's metrics, at its version number, to SESSION/logs (TensorBoard) or to "
                            "Trackio or W&B (default none).")
    serve.add_argument("--loss-type", help=f"DPO updates' loss: one or several of {', '.join(LOSS_TERMS)}, "
                                           f"comma-separated (default {','.join(LIVE_TRAINING.loss_type)}); "
                                           "an update's hyperparameters override it.")
    serve.add_argument("--loss-weights", help="Their weights, comma-separated, one per loss type (default 1 each).")
    serve.add_argument("--label-smoothing", type=float, help="DPO updates' label smoothing (train dpo --help: "
                                                             "what each loss type does with it; default 0).")
    serve.add_argument("--gradient-checkpointing", action="store_true",
                       help="Updates recompute activations in the backward pass instead of keeping them: "
                            "less memory for big models, ~1/3 slower updates.")
    return root


def main(argv: list[str] | None = None, prog: str = "python -m engine") -> int:
    """Parse `argv` (default sys.argv[1:]) and run the command; returns the exit code.

    Bad arguments exit 2 (SystemExit), `--help` exits 0."""
    args = vars(parser(prog).parse_args(argv))
    args.pop("command")
    from engine.options import ServeOptions
    from engine.server import main as serve_main

    return serve_main(ServeOptions(**args))


if __name__ == "__main__":
    sys.exit(main())
