"""`tui-align models`: where the default model lives, its size and parameter count."""

from __future__ import annotations

import typer

from tui_align.cli.common import user_errors


def models(
    model: str = typer.Option(None, "--model", help="A model folder, GGUF file or hub id (default: the bundled SmolLM2-135M-Instruct)."),
) -> None:
    """Show the resolved model: path, size on disk and parameter count (converting the default on first use)."""
    with user_errors():
        from pathlib import Path

        from engine import models as m

        where, _ = m.resolve(model)
        path = Path(where)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0
        loaded, _ = m.load_model(model, device="cpu")
        typer.echo(f"model:      {m.model_name(model)}")
        typer.echo(f"path:       {where}")
        if size:
            typer.echo(f"size:       {size / 2**20:.0f} MiB")
        typer.echo(f"parameters: {m.parameter_count(loaded):,}")
