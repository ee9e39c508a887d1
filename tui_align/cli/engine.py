"""`tui-align engine serve`: run the engine process (the same code as `python -m engine serve`)."""

from __future__ import annotations

import typer

engine_app = typer.Typer(help="The engine process that owns the model (the TUI starts one for you).", no_args_is_help=True)


@engine_app.command()
def serve(
    model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: bundled SmolLM2-135M-Instruct)."),
    method: str = typer.Option("dpo", "--method", help="Default update method: dpo, sft or ppo."),
    socket: str = typer.Option(None, "--socket", help="Unix socket path, created with mode 0600 (default ./engine.sock)."),
    listen: str = typer.Option(None, "--listen", help="Serve TCP on loopback HOST:PORT instead (for an SSH tunnel); needs --token-file."),
    token_file: str = typer.Option(None, "--token-file", help="File holding the token a client must send in hello."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32 or bfloat16."),
    session_dir: str = typer.Option(None, "--session-dir", help="Session folder: versions are saved under SESSION/versions; the engine resumes at the latest."),
    version: int = typer.Option(None, "--version", help="Start at this saved version of --session-dir (0: the base model; default: the latest)."),
    watch_stdin: bool = typer.Option(False, "--watch-stdin", help="Exit when stdin closes (the client that spawned the engine has gone)."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads for model work (default: all cores but one, left for the event loop and the TUI)."),
    lora_r: int = typer.Option(16, "--lora-r", help="LoRA rank of the live adapter."),
    lora_alpha: int = typer.Option(32, "--lora-alpha", help="LoRA alpha of the live adapter."),
) -> None:
    """Load the model once, print one `ready ...` line on stdout, serve one client at a time."""
    from tui_align.cli.common import fail, passive_openmp

    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device {device}: choose auto, cpu or cuda")
    if dtype not in ("auto", "float32", "bfloat16"):
        fail(f"--dtype {dtype}: choose auto, float32 or bfloat16")
    passive_openmp()  # as python -m engine: before torch loads OpenMP
    from engine.server import ServeOptions, main  # heavy: only when the command runs

    code = main(ServeOptions(model=model, method=method, socket=socket, listen=listen, token_file=token_file,
                             device=device, dtype=dtype, session_dir=session_dir, lora_r=lora_r, lora_alpha=lora_alpha, version=version,
                             threads=threads, watch_stdin=watch_stdin))
    raise typer.Exit(code)
