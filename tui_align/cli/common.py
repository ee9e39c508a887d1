"""What every command shares: failing with one clear line, and turning engine errors into it."""

from __future__ import annotations

import contextlib
import sys

import typer

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    """Print `error: message` on stderr and exit (2: usage and data errors)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Show engine.errors.UserError (bad flag, file or row) as one line, exit 2."""
    from engine.errors import UserError  # torch-free

    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
