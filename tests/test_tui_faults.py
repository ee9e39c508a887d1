"""Faults and hostile input on the person-facing side (issue 16): damaged versions, a store whose
writes fail, a bad --model, the buttons after a start, the death notice, a killed import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import versions as vs
from engine.protocol import UserError
from tests.fakes import FakeEngine, write_version
from tests.test_tui_fake import ask, until
from tui_align.app import ChatTrainApp
from tui_align.cli import app as cli_app
from tui_align.client import EngineDied
from tui_align.loop import LiveLoop, LoopConfig
from tui_align.rounds import Phase
from tui_align.store import SessionStore

runner = CliRunner()
DISK_FULL = "database or disk is full"
WARNING_TAIL = "/site-packages/x.py:12: UserWarning: something deprecated\n  warnings.warn(\n"


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 100)


# 8. A damaged version ------------------------------------------------------------------------


def test_the_version_check_finds_each_kind_of_damage(tmp_path):
    root = tmp_path / "versions"
    intact, truncated, missing, header, rank = (write_version(root, n) for n in range(1, 6))
    truncate(truncated / vs.ADAPTER)
    (missing / vs.ADAPTER).unlink()
    (header / vs.ADAPTER).write_bytes((10**6).to_bytes(8, "little") + b"{")
    (rank / vs.ADAPTER_CONFIG).write_text(json.dumps({"r": 8}))
    assert vs.problem(intact, 16) is None
    assert "adapter_model.safetensors is truncated" in vs.problem(truncated, 16)
    assert vs.problem(missing, 16) == "adapter_model.safetensors is missing"
    assert "truncated" in vs.problem(header, 16)
    assert "LoRA rank 8" in vs.problem(rank, 16) and vs.problem(rank) is None  # the rank only when asked
    assert vs.newest_intact(root, 16) == 1


def test_the_engine_names_a_damaged_version_in_one_line_and_exits_2(tmp_path):
    folder = tmp_path / "session"
    write_version(folder / "versions", 1)
    truncate(write_version(folder / "versions", 2, parent=1) / vs.ADAPTER)
    (tmp_path / "model").mkdir()  # never loaded: the versions are checked first
    (tmp_path / "model" / "config.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "engine", "serve", "--session-dir", str(folder), "--model",
                           str(tmp_path / "model"), "--socket", str(tmp_path / "e.sock")],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: version 2 in") and "truncated" in lines[0] and lines[0].endswith("--version 1")
    assert not proc.stdout  # no ready line


def test_a_start_at_a_version_of_another_lora_rank_is_refused(tmp_path):
    root = tmp_path / "versions"
    write_version(root, 1, r=8)
    with pytest.raises(UserError, match=r"version 1 .* LoRA rank 8, this engine's is 16 .* --version 0$"):
        vs.check_start(root, None, 16)
    assert vs.check_start(root, None, 8) == 1 and vs.check_start(root, 0, 16) == 0


def damaged_session(tmp_path) -> SessionStore:
    """v1 intact, v2 (the live one) truncated."""
    store = SessionStore.open(tmp_path / "sessions", "hurt")
    for number in (1, 2):
        write_version(store.versions_dir, number, parent=number - 1)
        store.record_version(number, vs.version_dir(store.versions_dir, number))
    store.set_active_version(2)
    truncate(vs.version_dir(store.versions_dir, 2) / vs.ADAPTER)
    return store


async def test_the_tui_offers_the_newest_intact_version_and_ctrl_r_starts_there(tmp_path):
    store = damaged_session(tmp_path)
    engine = FakeEngine()
    engine.parents = {1: 0, 2: 1}
    app = ChatTrainApp(store, LoopConfig(seed=0, candidates=2, update_every=100), engine)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.loop_state.engine == "error", "the refusal")
        assert engine.starts == 0  # the engine was not even spawned on it
        offer = [n.message for n in app._notifications if "cannot be loaded" in n.message]
        assert offer and "v2" in offer[0] and "truncated" in offer[0] and "ctrl+r to start at v1" in offer[0]
        assert "ctrl+r starts at v1" in app.chat.prompt.placeholder
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.loop_state.engine == "ready", "the engine at v1")
        assert engine.start_version == 1 and app.loop_state.version == 1 and store.active_version() == 1
        await pilot.press("ctrl+q")


def test_sessions_show_marks_damaged_versions(tmp_path):
    damaged_session(tmp_path).close()
    result = runner.invoke(cli_app, ["sessions", "show", "hurt", "--sessions-dir", str(tmp_path / "sessions")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.strip() == "v0 <- v1" for line in lines)
    assert any("v2  DAMAGED: adapter_model.safetensors is truncated" in line for line in lines)


# 9. A store whose writes fail ---------------------------------------------------------------


def fail_writes(store: SessionStore, tables=("turns", "responses", "preferences", "examples", "updates",
                                             "conversations", "arena")) -> None:
    """Every insert and update of these tables fails as on a full disk (temporary triggers: this
    connection only, the file is untouched)."""
    for table in tables:
        for event in ("insert", "update"):
            store.db.execute(f"create temp trigger full_{table}_{event} before {event} on main.{table} "
                             f"begin select raise(abort, '{DISK_FULL}'); end")


def free_space(store: SessionStore) -> None:
    for (name,) in store.db.execute("select name from sqlite_temp_master where type = 'trigger'").fetchall():
        store.db.execute(f"drop trigger {name}")


def not_stored(app) -> list[str]:
    return [n.message for n in app._notifications if n.message.startswith("could not store")]


async def test_failed_writes_are_said_in_one_line_shown_as_nothing_and_the_app_goes_on(tmp_path):
    store = SessionStore.open(tmp_path / "sessions", "full")
    app = ChatTrainApp(store, LoopConfig(seed=0, candidates=2, update_every=100), FakeEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        chat = app.chat
        await ask(pilot)
        fail_writes(store)
        await pilot.press("a")  # the pick fails: the round stays open, nothing says stored
        assert not_stored(app)[-1].startswith(f"could not store the pick: {DISK_FULL}")
        assert chat.phase is Phase.JUDGING and chat.round is not None
        assert not store.db["preferences"].count and app.loop_state.pending == 0
        assert all("✓" not in view.border_title for view in chat.candidates.views)
        free_space(store)
        await pilot.press("a")  # retried once there is room
        assert chat.phase is Phase.PROMPT and store.db["preferences"].count == 1 and app.loop_state.pending == 1

        fail_writes(store)
        turns = store.db["turns"].count
        await pilot.press(*"Again", "enter")  # the prompt fails: it stays in the box for another Enter
        assert not_stored(app)[-1].startswith("could not store your message")
        assert store.db["turns"].count == turns and chat.phase is Phase.PROMPT and chat.prompt.text == "Again"
        await pilot.press("escape", "u")  # an update whose start cannot be stored is not sent
        await pilot.pause(0.05)
        assert not_stored(app)[-1].startswith("could not store the update's start")
        assert not app.client.updates and not app.loop.updating
        await pilot.press("n")  # a new conversation neither
        assert not_stored(app)[-1].startswith("could not store the new conversation")
        free_space(store)
        assert app.is_running and app.return_code is None
        await pilot.press("u")
        await until(pilot, lambda: len(app.client.updates) == 1 and not app.loop.updating, "the update")
        assert store.db["updates"].count == 1
        await pilot.press("ctrl+q")
    assert app.return_code == 0


async def test_an_update_whose_version_cannot_be_recorded_is_said_and_the_loop_goes_on(tmp_path):
    with SessionStore.open(tmp_path / "sessions", "full") as store:
        notices = []
        loop = LiveLoop(store, FakeEngine(), LoopConfig(seed=0, candidates=2, update_every=100),
                        on_notice=lambda text, severity: notices.append((severity, text)))
        assert await loop.start()
        round_ = await loop.generate(loop.begin(store.new_conversation(), "Hi"))
        loop.pick(round_, 0)
        store.db.execute("create temp trigger full before insert on main.versions "
                         f"begin select raise(abort, '{DISK_FULL}'); end")
        assert (await loop.update())["version"] == 1
        errors = [text for severity, text in notices if severity == "error"]
        assert errors and errors[0].startswith("could not store version 1 (it is live in the engine")
        assert store.latest_version() == 0 and store.db["updates"].get(1)["status"] == "running"
        assert not loop.updating and loop.state.version == 1  # the engine's version, as it is


# 11. A bad --model ---------------------------------------------------------------------------


def test_a_missing_model_is_refused_before_the_session_exists(tmp_path):
    root = tmp_path / "sessions"
    result = runner.invoke(cli_app, ["chat-train", "--model", "/nonexistent", "--sessions-dir", str(root)])
    assert result.exit_code == 2 and result.output.strip() == "error: --model /nonexistent: no such folder or file"
    assert not (root / "default").exists()


def test_a_recorded_model_does_not_stick_to_a_session_with_no_version(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(ChatTrainApp, "run", lambda self: (started.append(self.client.model), self.store.close()))
    root, model = tmp_path / "sessions", tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    SessionStore.open(root, "s", model="/nonexistent").close()  # what an earlier tui-align recorded
    result = runner.invoke(cli_app, ["chat-train", "--model", str(model), "--session", "s", "--sessions-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert started == [str(model)]
    with SessionStore.open(root, "s") as store:
        assert store.meta["model"] == str(model)
        write_version(store.versions_dir, 1)
        store.record_version(1, vs.version_dir(store.versions_dir, 1))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    result = runner.invoke(cli_app, ["chat-train", "--model", str(other), "--session", "s", "--sessions-dir", str(root)])
    assert result.exit_code == 2 and "was trained on" in result.output  # with a version, the model is kept


# 12. u and ctrl+z after every start -----------------------------------------------------------


def session_with_pending(tmp_path, pairs: int = 2) -> SessionStore:
    store = SessionStore.open(tmp_path / "sessions", "s")
    add_pairs(store, pairs)
    return store


def add_pairs(store: SessionStore, pairs: int) -> None:
    conversation = store.new_conversation()
    for i in range(pairs):
        turn = store.add_user_turn(conversation, f"q{i}")
        x, y = store.add_responses(turn, [{"text": "x"}, {"text": "y"}], None, {})
        store.record_preference(turn, x, [y])


async def test_train_now_and_undo_work_as_soon_as_the_status_bar_says_idle_after_every_start(tmp_path):
    store = session_with_pending(tmp_path)
    engine = FakeEngine()
    app = ChatTrainApp(store, LoopConfig(seed=0, candidates=2, update_every=100), engine)
    async with app.run_test(size=(140, 30)) as pilot:
        for start in range(2):  # the first start, then a restart after a death
            await until(pilot, lambda: app.loop_state.engine == "ready", "the engine")
            assert "idle" in str(app.chat.status_bar.render())
            await pilot.press("escape", "u")  # no round has run since this start
            await until(pilot, lambda: len(engine.updates) == start + 1 and not app.loop.updating, "the update")
            assert app.loop_state.version == engine.version > 0
            live = engine.version
            await pilot.press("ctrl+z")
            await until(pilot, lambda: engine.version < live, "the rollback")
            assert not [n for n in app._notifications if "not ready" in n.message or "wait for" in n.message]
            engine.die(1)
            app.loop.check_engine()
            await until(pilot, lambda: app.loop_state.engine == "error", "the death")
            add_pairs(store, 2)
            await pilot.press("ctrl+r")
        await pilot.press("ctrl+q")


# 13. The death notice -------------------------------------------------------------------------


async def test_the_death_notice_shows_the_error_not_a_warning_source_line(tmp_path):
    with SessionStore.open(tmp_path / "sessions", "s") as store:
        notices = []
        engine = FakeEngine()
        loop = LiveLoop(store, engine, LoopConfig(seed=0, candidates=2, update_every=2, window=8), on_notice=lambda text, severity: notices.append(text))
        assert await loop.start()
        engine.die(1, "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                      "RuntimeError: CUDA error: an illegal memory access\n" + WARNING_TAIL)
        loop.check_engine()
        assert notices[-1].startswith("the engine died (exit 1): RuntimeError: CUDA error: an illegal memory access")
        assert await loop.start(restart=True)
        engine.die(-9, "loading…\n" + WARNING_TAIL)  # killed, nothing said but a warning: no warning shown
        loop.check_engine()
        assert notices[-1].startswith("the engine died (exit -9): loading…") and "warn" not in notices[-1]
    died = EngineDied(2, "error: --model x: no such folder or file\n" + WARNING_TAIL, "engine exited with code 2")
    assert str(died) == "engine exited with code 2: error: --model x: no such folder or file"


# 15. A killed import's staging folder ------------------------------------------------------------


def test_a_killed_imports_staging_folder_is_swept_at_the_next_import(tmp_path):
    root = tmp_path / "sessions"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = root / f".importing-old-{gone.pid}"
    running = root / f".importing-busy-{os.getpid()}"  # an import that is still going on
    for folder in (stale, running):
        (folder / "x").mkdir(parents=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n")
    result = runner.invoke(cli_app, ["sessions", "import", str(data), "--name", "new", "--sessions-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and running.exists() and (root / "new" / "session.db").exists()


def test_a_start_that_cannot_store_exits_non_zero_with_one_line(tmp_path, capfd):
    store = SessionStore.open(tmp_path / "sessions", "full")  # new: the screen's first write is its conversation
    fail_writes(store)
    app = ChatTrainApp(store, LoopConfig(seed=0, candidates=2, update_every=2, window=8), FakeEngine())
    app.run(headless=True)
    out = capfd.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.strip()]
    assert app.return_code == 1 and lines == [f"error: could not store the first conversation: {DISK_FULL}"]
