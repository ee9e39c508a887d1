"""What every command shares: failing with one clear line, and turning engine errors into it."""

from __future__ import annotations

import contextlib
import os
import sys

import typer

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    """Print `error: message` on stderr and exit (2: usage and data errors)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (as in the engine, engine/__main__.py).
    Only effective before torch is first imported: on 2 shared cores, spinning made steps
    several times slower."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def user_errors():
    """Show engine.protocol.UserError (bad flag, file or row) as one line, exit 2.

    Every command that imports torch in-process does so inside this block, so OpenMP is set
    up here first (passive_openmp)."""
    passive_openmp()
    from engine.protocol import UserError  # torch-free

    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
