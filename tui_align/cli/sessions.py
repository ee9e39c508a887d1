"""`tui-align sessions list|show|export|import`: look at saved sessions and move them in and out.

Exports use TRL's conversational dataset formats, so any TRL trainer reads them:
  preference  {prompt, chosen, rejected}   (DPOTrainer; pairs with outcome `chosen` only)
  sft         {messages}                   (SFTTrainer; demonstrations and picked replies)
  kto         {prompt, completion, label}  (KTOTrainer's unpaired format; `ratings` is another name)
  grpo        {prompt, completions, scores} (GRPO groups: a turn's replies scored 1-5, at least 2)
A grpo row is TRL's prompt-only format (what GRPOTrainer trains from: it samples its own
completions) plus two extra columns, which GRPOTrainer hands to reward functions as keyword
arguments: the person's scored replies, in the order they were scored, and their 1-5 scores.
A rating's label is True for thumbs up, 4-5 on the 1-5 scale and numeric scores > 0;
False for thumbs down, 1-2 and numeric <= 0; a 3 on the 1-5 scale is neutral and left out
(tui_align/feedback.py). Import reads the same formats (and SFT {prompt, completion}, and plain strings) into a
new session; export -> import -> export gives the same rows.
"""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import typer

from tui_align.cli.common import fail, user_errors

sessions_app = typer.Typer(help="List, inspect, export and import saved sessions.", no_args_is_help=True)

KINDS = ("preference", "sft", "kto", "grpo")
ALIASES = {"ratings": "kto"}  # the name before `train kto` existed
SESSIONS_DIR = typer.Option(None, "--sessions-dir", envvar="TUI_ALIGN_SESSIONS", show_envvar=True,
                            help="Folder holding the sessions (default: ./sessions).")


def _when(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


@sessions_app.command("list")
def list_(sessions_dir: Path = SESSIONS_DIR) -> None:
    """One line per session: model, counts of feedback, latest version, last activity."""
    from tui_align.store import SessionError, SessionStore, list_sessions, sessions_dir as resolve

    root = resolve(sessions_dir)
    names = list_sessions(root)
    if not names:
        typer.echo(f"no sessions in {root}")
        return
    typer.echo(f"{'name':<20} {'model':<24} {'prompts':>7} {'pairs':>6} {'ratings':>7} {'demos':>6} "
               f"{'updates':>7} {'version':>7}  last activity")
    for name in names:
        try:
            with SessionStore.open(root, name, readonly=True) as store:
                c = store.counts()
                model = store.meta["model"] or "(default)"
                typer.echo(f"{name:<20} {model[-24:]:<24} {c['prompts']:>7} {c['pairs']:>6} {c['ratings']:>7} "
                           f"{c['demos']:>6} {c['updates']:>7} {store.latest_version():>7}  {_when(store.last_activity())}")
        except SessionError as exc:
            typer.echo(f"{name:<20} unreadable: {exc}")


@sessions_app.command()
def show(name: str = typer.Argument(..., help="Session name."),
         last: int = typer.Option(3, "--last", help="How many of the latest exchanges to show."),
         sessions_dir: Path = SESSIONS_DIR) -> None:
    """A session's summary, its updates, and its last few exchanges."""
    with user_errors():
        from tui_align.store import SessionStore, sessions_dir as resolve

        with SessionStore.open(resolve(sessions_dir), name, readonly=True) as store:
            meta, counts = store.meta, store.counts()
            typer.echo(f"session   {name}  ({store.folder})")
            typer.echo(f"model     {meta['model'] or '(default)'}   method {meta['method']}   "
                       f"created {_when(meta['created'])}   schema v{meta['schema_version']}")
            typer.echo("feedback  " + "   ".join(f"{k} {v}" for k, v in counts.items()))
            typer.echo(f"version   {store.latest_version()}   last activity {_when(store.last_activity())}")
            _version_tree(store)
            for row in store.metrics_history()[-5:]:
                figures = "  ".join(f"{k}={v:.3g}" for k, v in row.items() if k in ("loss", "rewards/accuracies", "rewards/margins"))
                typer.echo(f"  update {row['update']}: {row['method']} on {row['examples']} -> v{row['version']}  {figures}")
            turns = list(store.db["turns"].rows_where(order_by="id desc", limit=last))[::-1]
            for turn in turns:
                typer.echo(f"\n> {_short(turn['text'])}")
                for r in store.responses(turn["id"]):
                    mark = "*" if r["chosen"] else " "
                    source = f"v{r['version']}" if r["version"] is not None else r["source"]
                    typer.echo(f"  {mark} [{source}, {r['finish_reason'] or '-'}] {_short(r['text'])}")


def _version_tree(store) -> None:
    """Each version with the one it was trained from, the rollbacks, and which one is live."""
    import json
    import re

    from engine.versions import METADATA, problem, version_dir

    live = store.active_version()
    typer.echo("versions  (parent <- version; * live; a damaged one says why)")
    for number in store.version_numbers():
        folder = version_dir(store.versions_dir, number)
        damage = number and problem(folder)  # the files only: the rank is the engine's choice
        meta = folder / METADATA
        parent = json.loads(meta.read_text()).get("parent") if number and not damage and meta.exists() else None
        link = f"v{parent} <- " if parent is not None else ""
        typer.echo(f"  {'*' if number == live else ' '} {link}v{number}" + (f"  DAMAGED: {damage}" if damage else ""))
    for event in store.db["events"].rows_where("message like 'rolled back%'", order_by="id"):
        found = re.search(r"from v(\d+) to v(\d+)", event["message"])
        if found:
            typer.echo(f"    rollback v{found[1]} -> v{found[2]}  {_when(event['time'])}")


@sessions_app.command()
def leaderboard(name: str = typer.Argument(..., help="Session name."),
                as_json: bool = typer.Option(False, "--json", help="One JSON list instead of a table."),
                sessions_dir: Path = SESSIONS_DIR) -> None:
    """Bradley-Terry ratings of the session's versions from its blind arena votes (Elo scale, v0 = 1000)."""
    with user_errors():
        from dataclasses import asdict
        import json

        from tui_align.arena import leaderboard as ratings
        from tui_align.store import SessionStore, sessions_dir as resolve

        with SessionStore.open(resolve(sessions_dir), name, readonly=True) as store:
            votes, live = store.arena_votes(), store.active_version()
        board = ratings(votes)
        if as_json:
            typer.echo(json.dumps([{**asdict(r), "live": r.version == live} for r in board], indent=1))
            return
        if not board:
            typer.echo(f"session {name} has no arena votes yet (chat-train --arena-every K makes them)")
            return
        typer.echo(f"{'version':>8} {'rating':>7} {'95% interval':>15} {'votes':>6} {'vs v0':>6}  ({len(votes)} votes)")
        for r in board:
            rate = f"{r.win_rate_vs_v0:.0%}" if r.win_rate_vs_v0 is not None else "-"
            mark = "*" if r.version == live else " "
            typer.echo(f"{mark}{'v' + str(r.version):>7} {r.rating:>7.0f} {f'{r.low:.0f}-{r.high:.0f}':>15} "
                       f"{r.votes:>6} {rate:>6}")


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# Export -------------------------------------------------------------------------------------


def export_rows(store, kind: str) -> list[dict]:
    """The session's feedback as rows of `kind` in TRL's conversational format."""
    if kind == "preference":
        return [{k: ex[k] for k in ("prompt", "chosen", "rejected")} for _, ex in store.feedback("dpo")]
    if kind == "sft":
        return [{"messages": ex["prompt"] + ex["completion"]} for _, ex in store.feedback("sft")]
    if kind == "grpo":
        return store.scored_groups()[0]
    return [ex for _, ex in store.feedback("kto")]


def _kind(kind: str | None) -> str | None:
    kind = ALIASES.get(kind, kind)
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    return kind


@sessions_app.command()
def export(name: str = typer.Argument(..., help="Session name."),
           kind: str = typer.Option("preference", "--kind", help="preference, sft, kto (the ratings, as "
                                    "{prompt, completion, label}; `ratings` is another name for it) or grpo."),
           fmt: str = typer.Option("jsonl", "--format", help="jsonl (one JSON row a line) or hf (datasets.save_to_disk folder)."),
           out: Path = typer.Option(..., "--out", help="File (jsonl) or folder (hf) to write; must not exist yet."),
           sessions_dir: Path = SESSIONS_DIR) -> None:
    """Export a session's feedback as a dataset TRL trainers read directly."""
    with user_errors():
        kind = _kind(kind)
        if fmt not in ("jsonl", "hf"):
            fail(f"--format {fmt}: choose jsonl or hf")
        if out.exists():
            fail(f"--out {out} already exists: choose a new path (nothing was written)")
        if not out.absolute().parent.is_dir():
            fail(f"--out {out}: no folder {out.absolute().parent} to write it in (nothing was written)")
        from tui_align.store import SessionStore, sessions_dir as resolve

        with SessionStore.open(resolve(sessions_dir), name, readonly=True) as store:
            rows = export_rows(store, kind)
        if not rows:
            fail(f"session {name!r} has no {kind} rows to export")
        write_rows(rows, out, fmt)
        typer.echo(f"exported {len(rows)} {kind} rows from {name} -> {out}")


def write_rows(rows: list[dict], out: Path, fmt: str) -> None:
    """Write to a temporary path, then rename: a failure leaves nothing at `out`."""
    import json

    partial = out.with_name(out.name + ".partial")
    if fmt == "jsonl":
        partial.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    else:
        from datasets import Dataset

        shutil.rmtree(partial, ignore_errors=True)
        Dataset.from_list(rows).save_to_disk(str(partial))
    partial.rename(out)


# Import -------------------------------------------------------------------------------------


def detect_kind(row: dict) -> str:
    if "completions" in row:
        return "grpo"
    from engine.data import detect_kind as data_kind

    return data_kind(row)


def _messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _validate(row: dict, kind: str) -> None:
    from engine.data import validate
    from engine.protocol import DataError

    if kind == "grpo":
        from engine.data import validate_group

        validate_group(row, scale=(1, 5))  # stored as the person's 1-5 ratings
    else:
        validate(row, kind)
    prompt = _messages(row["messages"][:-1] if "messages" in row else row["prompt"], "user")
    roles = [m["role"] for m in prompt if m["role"] != "system" or m is not prompt[0]]
    if not roles or roles[-1] != "user" or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(roles)):
        raise DataError("the prompt must alternate user and assistant messages (after an optional system message) "
                        "and end with a user message")


def _add_prompt(store, prompt: list[dict]) -> int:
    """A new conversation holding `prompt`; returns the turn of its last user message."""
    system = prompt[0]["content"] if prompt[0]["role"] == "system" else None
    conversation = store.new_conversation(system)
    turn = parent = None
    for message in prompt[1 if system is not None else 0:]:
        if message["role"] == "user":
            turn = store.add_user_turn(conversation, message["content"], parent_id=parent)
        else:
            (parent,) = store.add_responses(turn, [{"text": message["content"]}], None, {}, source="import")
            store.choose(turn, parent)
    return turn


def import_row(store, row: dict, kind: str) -> None:
    text = lambda value: _messages(value, "assistant")[-1]["content"]  # noqa: E731
    if kind == "sft":
        prompt = row["messages"][:-1] if "messages" in row else _messages(row["prompt"], "user")
        completion = row["messages"][-1:] if "messages" in row else row["completion"]
        store.record_demonstration(_add_prompt(store, prompt), text(completion))
        return
    turn = _add_prompt(store, _messages(row["prompt"], "user"))
    if kind == "grpo":
        responses = store.add_responses(turn, [{"text": text(c)} for c in row["completions"]], None, {}, source="import")
        for response, score in zip(responses, row["scores"]):
            store.record_rating(response, score, "1-5")
        return
    if kind == "preference":
        chosen, rejected = store.add_responses(turn, [{"text": text(row["chosen"])}, {"text": text(row["rejected"])}],
                                               None, {}, source="import")
        store.record_preference(turn, chosen, [rejected])
    else:
        (response,) = store.add_responses(turn, [{"text": text(row["completion"])}], None, {}, source="import")
        store.record_rating(response, 1 if row["label"] else 0, "thumbs")


def staging_folder(root: Path, name: str, pid: int) -> Path:
    """Where `sessions import` builds a session before renaming it into place."""
    return root / f".importing-{name}-{pid}"


def sweep_stale_imports(root: Path) -> None:
    """Remove the staging folders of imports whose process is gone (killed mid-import; a live one is left)."""
    from engine.resources import pid_alive
    for folder in root.glob(".importing-*-*") if root.is_dir() else []:
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)




@sessions_app.command("import")
def import_(file: Path = typer.Argument(..., help="JSONL file or datasets.save_to_disk folder to import."),
            name: str = typer.Option(..., "--name", help="Name of the new session."),
            kind: str = typer.Option(None, "--kind", help="preference, sft, kto or grpo (default: detected from the rows)."),
            model: str = typer.Option(None, "--model", help="Model to record for the session (default: the bundled one)."),
            sessions_dir: Path = SESSIONS_DIR) -> None:
    """Import a dataset in TRL's formats into a new session (written completely or not at all)."""
    with user_errors():
        from engine.data import read_rows
        from engine.protocol import DataError
        from tui_align.store import SessionStore, list_sessions, sessions_dir as resolve

        kind = _kind(kind)
        root = resolve(sessions_dir)
        sweep_stale_imports(root)
        if name in list_sessions(root) or (root / name).exists():
            fail(f"session {name!r} already exists in {root}: choose a new name")
        rows = read_rows(file)
        try:
            kind = kind or detect_kind(rows[0])
        except DataError as exc:
            raise DataError(f"{file}: row 1: {exc}") from None
        for number, row in enumerate(rows, 1):
            try:
                _validate(row, kind)
            except DataError as exc:
                raise DataError(f"{file}: row {number}: {exc}") from None
        staging = staging_folder(root, name, os.getpid())
        try:
            with SessionStore.open(staging, name, model=model) as store:
                with store.db.atomic():  # one commit: the staging folder is renamed into place only when complete
                    for row in rows:
                        import_row(store, row, kind)
                counts = store.counts()
            (staging / name).rename(root / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        typer.echo(f"imported {len(rows)} {kind} rows from {file} into session {name} "
                   f"({counts['pairs']} pairs, {counts['ratings']} ratings, {counts['demos']} demos)")
