"""The root Typer app: one sub-app or command group per file, joined here.

Nothing heavy is imported at module level: `tui-align --help` must start instantly.
"""

import typer

from tui_align.cli.chat import chat_train
from tui_align.cli.engine import engine_app
from tui_align.cli.models import models
from tui_align.cli.replay import replay
from tui_align.cli.sessions import sessions_app
from tui_align.cli.simulate import simulate
from tui_align.cli.train import train_app

app = typer.Typer(
    name="tui-align",
    help="Align a language model by talking to it: pick, score or correct replies; it trains as you go.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(models)
app.add_typer(train_app, name="train")
app.add_typer(engine_app, name="engine")
app.add_typer(sessions_app, name="sessions")
app.command()(replay)
app.command()(simulate)
app.command("chat-train")(chat_train)


def main() -> None:
    app()
