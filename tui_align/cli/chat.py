"""`tui-align chat-train`: chat with the model; every pick, score or edit trains it within seconds."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from engine.protocol import METHODS, REPORT_TO
from tui_align.cli.common import fail, user_errors
from tui_align.cli.sessions import sweep_stale_imports
from tui_align.loop import LoopConfig

LOOP = LoopConfig()  # the defaults of every flag below that sets the live loop's policy


def chat_train(
    model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: the session's "
                              "model, else the bundled SmolLM2-135M-Instruct)."),
    session: str = typer.Option("default", "--session", help="Session name: created if new, resumed (history and "
                                "the version live when it was left) if it exists."),
    method: str = typer.Option(None, "--method", help="dpo (pick the better reply), ppo (score replies 1-5), kto "
                               "(mark each reply + or -), grpo (score each of the N candidates 1-5: one group), or "
                               "sft (edits as demonstrations); default: the session's method, else dpo."),
    candidates: int = typer.Option(LOOP.candidates, "--candidates", min=1, max=8, help="Candidate replies per round (1-8)."),
    update_every: int = typer.Option(LOOP.update_every, "--update-every", min=1,
                                     help="Train after this many new training rows (a pick of 2 makes one pair)."),
    update_after: int = typer.Option(LOOP.update_after, "--update-after", min=0, help="Train on fewer new rows too "
                                     "once this many rounds have passed without an update (0: never)."),
    window: int = typer.Option(LOOP.window, "--window", min=1, help="Rows per live update: the newest untrained "
                               "ones, topped up with the most recently trained."),
    replay: int = typer.Option(LOOP.replay, "--replay", min=0, help="More rows per live update, sampled at random "
                               "from all older trained ones (0: none)."),
    replay_edits: int = typer.Option(LOOP.replay_edits, "--replay-edits", min=0, help="More rows per live update: "
                                     "each of the N newest edits over the reply it corrects, already trained on (0: none)."),
    arena_every: int = typer.Option(LOOP.arena_every, "--arena-every", min=0, help="Every K-th prompt is a blind "
                                    "arena round: the live version against an earlier one (`l` shows the ratings); 0: never."),
    sessions_dir: Path = typer.Option(None, "--sessions-dir", help="Folder of sessions (default: $TUI_ALIGN_SESSIONS "
                                      "or ./sessions)."),
    device: str = typer.Option("auto", "--device", help="Engine device: auto, cpu or cuda."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="The engine's updates "
                                                "recompute activations instead of keeping them: less memory for big "
                                                "models, ~1/3 slower updates."),
    max_new_tokens: int = typer.Option(LOOP.max_new_tokens, "--max-new-tokens", min=1, help="Longest reply, in tokens."),
    temperature: float = typer.Option(LOOP.temperature, "--temperature", min=0.0,
                                      help="Sampling temperature of the candidates."),
    system: str = typer.Option(LOOP.system, "--system", help="System prompt of new conversations ('' for "
                               "none). Short answers finish, and finished replies teach more than cut-off ones."),
    report_to: str = typer.Option("none", "--report-to", help="Log every live update (at its version number) to "
                                  "tensorboard (SESSION/logs: `tensorboard --logdir SESSION/logs`), trackio, wandb or none."),
) -> None:
    """Chat with the model in a terminal UI; every pick, score or edit trains it within seconds."""
    # sqlite-utils imports pandas and numpy when installed (~0.5 s); the TUI needs neither, and the
    # first frame must come within a second. Hidden only while the store is imported.
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))
    try:
        from tui_align.store import SessionStore
        from tui_align.store import sessions_dir as resolve_sessions_dir
    finally:
        for name in hidden:
            sys.modules.pop(name, None)

    if report_to not in REPORT_TO:
        fail(f"--report-to {report_to}: choose one of {', '.join(REPORT_TO)}")
    sweep_stale_imports(resolve_sessions_dir(sessions_dir))
    if method is not None and method not in METHODS:
        fail(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    new_session = not (resolve_sessions_dir(sessions_dir) / session / "session.db").exists()
    if new_session and (method or "dpo") in ("dpo", "grpo") and candidates < 2:  # refused before anything is created
        fail(f"--candidates: {method or 'dpo'} needs at least 2 candidates to compare")
    with user_errors():
        if model and model != "default":  # a missing folder or file is refused before the session records it
            from engine.models import resolve as resolve_model  # torch-free

            resolve_model(model)
        store = SessionStore.open(resolve_sessions_dir(sessions_dir), session, model=model, method=method or "dpo")
    meta = store.meta
    if method and method != meta["method"]:
        store.close()
        fail(f"session {session!r} is a {meta['method']} session; drop --method or use a new --session")
    if model and meta["model"] and model != meta["model"]:
        from engine import versions as vs

        if store.latest_version() or vs.list_versions(store.versions_dir):
            store.close()
            fail(f"session {session!r} was trained on {meta['model']}; its versions do not fit {model}: "
                 "drop --model or use a new --session")
        store.set_model(model)  # no version was trained on the recorded one: nothing to fit
    method = meta["method"]
    if method in ("dpo", "grpo") and candidates < 2:
        store.close()
        fail(f"--candidates: {method} needs at least 2 candidates to compare")

    from tui_align.app import ChatTrainApp, engine_client  # Textual only now: --help stays instant

    config = LoopConfig(method=method, candidates=candidates, update_every=update_every, update_after=update_after,
                        window=window, replay=replay, replay_edits=replay_edits, arena_every=arena_every,
                        max_new_tokens=max_new_tokens, temperature=temperature, system=system or None)
    app = ChatTrainApp(store, config, engine_client(store, model or store.meta["model"], method, device, report_to,
                                                               gradient_checkpointing))
    app.run()
    if app.return_code:  # it ended on an error, already said in one line
        raise typer.Exit(app.return_code)
