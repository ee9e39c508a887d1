"""`tui-align engine serve`: run the engine process (the same code as `python -m engine serve`).

The options are defined once, by engine/__main__.py's argparse parser: this command hands
its arguments over untouched (so `tui-align engine serve --help` is argparse's help).
"""

from __future__ import annotations

import typer

engine_app = typer.Typer(help="The engine process that owns the model (the TUI starts one for you).", no_args_is_help=True)


@engine_app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Load the model once, print one `ready ...` line on stdout, serve one client at a time (--help: the options)."""
    from tui_align.cli.common import passive_openmp

    passive_openmp()  # as python -m engine: before torch loads OpenMP
    from engine.__main__ import main  # light: argparse; torch loads only when the engine starts

    raise typer.Exit(main(["serve", *ctx.args], prog="tui-align engine"))
