"""Snapshots of the chat screen at 80x24 and 160x48 (pytest-textual-snapshot).

Deterministic: the fake engine client (tests/fakes.py) answers with fixed candidates, and the
round runs as a person's would: a prompt typed, Enter, the candidates streamed. Regenerate
with --snapshot-update.
"""

from __future__ import annotations

import time

from tests.fakes import FakeEngine, write_version
from tui_align.app import ChatTrainApp
from tui_align.loop import LoopConfig
from tui_align.rounds import Phase
from tui_align.store import SessionStore

HISTORY_PROMPT = "What does DPO stand for?"
HISTORY_REPLY = "**Direct Preference Optimisation**: it trains a model on pairs of replies, the preferred over the other."
PROMPT = "Explain LoRA in one sentence."
CANDIDATES = [
    {"text": "LoRA fine-tunes a model by learning two small low-rank matrices per layer while the original "
             "weights stay frozen.", "tokens": 24, "finish_reason": "stop", "ttft_s": 0.1, "tokens_per_s": 22.0},
    {"text": "LoRA, or Low-Rank Adaptation, is a technique that is used in machine learning and which has many "
             "uses, for example when you want to adapt a large language model to a new task, and it is", "tokens": 40,
     "finish_reason": "length", "ttft_s": 0.1, "tokens_per_s": 21.0},
]
UPDATES = [
    {"loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.5},
    {"loss": 0.61, "rewards/margins": 0.2, "rewards/accuracies": 0.75},
    {"loss": 0.48, "rewards/margins": 0.5, "rewards/accuracies": 1.0},
]


def snapshot_app(tmp_path) -> ChatTrainApp:
    store = SessionStore.open(tmp_path / "sessions", "demo", model="SmolLM2-135M-Instruct")
    conversation = store.new_conversation()
    turn = store.add_user_turn(conversation, HISTORY_PROMPT)
    ids = store.add_responses(turn, [{"text": HISTORY_REPLY}, {"text": "Dynamic Program Output."}], 0, {}, [0, 1])
    store.record_preference(turn, ids[0], [ids[1]])
    for number, metrics in enumerate(UPDATES, start=1):
        update = store.start_update("dpo", [])
        store.finish_update(update, "done", version=number, metrics=metrics)
        store.record_version(number, write_version(store.versions_dir, number, parent=number - 1), metrics)
    engine = FakeEngine(candidates=CANDIDATES, model="SmolLM2-135M-Instruct")
    engine.parents = {number: number - 1 for number in range(1, len(UPDATES) + 1)}
    return ChatTrainApp(store, LoopConfig(seed=0, candidates=2), engine)


async def judging(pilot, metrics: bool = False) -> None:
    """A round whose candidates are done: what a person sees when the feedback keys are live."""
    chat = pilot.app.chat
    for phase in (Phase.PROMPT, Phase.JUDGING):
        started = time.monotonic()
        while chat.phase is not phase:
            assert time.monotonic() - started < 10, f"no {phase} after 10 s"
            await pilot.pause(0.01)
        if phase is Phase.PROMPT:
            await pilot.press(*PROMPT, "enter")
    if metrics:
        chat.action_toggle_metrics()
    await pilot.pause()


def test_main_screen_80x24(snap_compare, tmp_path):
    assert snap_compare(snapshot_app(tmp_path), terminal_size=(80, 24), run_before=judging)


def test_main_screen_160x48(snap_compare, tmp_path):
    async def with_metrics(pilot):
        await judging(pilot, metrics=True)

    assert snap_compare(snapshot_app(tmp_path), terminal_size=(160, 48), run_before=with_metrics)


async def test_every_action_is_in_the_command_palette_and_help_opens(tmp_path):
    from tui_align.screens.help import HelpScreen

    app = snapshot_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await judging(pilot)
        titles = {command.title for command in app.get_system_commands(app.screen)}
        assert {"Pick A", "Pick B", "Tie", "Both bad", "Skip round", "Edit reply", "Regenerate", "Train now",
                "Undo last update", "Take back", "New conversation", "Toggle metrics", "Help", "Restart engine", "Quit"} <= titles
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("t")  # a tie, from the keyboard: stored before the screen moves on
        assert [row["outcome"] for row in app.store.db["preferences"].rows][-1] == "tie"
