"""The chat screen as a view of the LiveLoop, on the fake engine client: keys, hints, corrections."""

from __future__ import annotations

import asyncio
import time

from tests.fakes import FakeEngine
from tui_align.app import ChatTrainApp
from tui_align.loop import LoopConfig
from tui_align.rounds import Phase, Round
from tui_align.store import SessionStore
from tui_align.widgets.prompt import PLACEHOLDERS, hint


def fake_app(tmp_path, method="dpo", **config) -> ChatTrainApp:
    store = SessionStore.open(tmp_path / "sessions", "fake", method=method)
    return ChatTrainApp(store, LoopConfig(**{"method": method, "candidates": 2, "window": 8, "seed": 0, "update_every": 100, **config}), FakeEngine())


async def until(pilot, condition, what: str) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < 10, f"timed out waiting for {what}"
        await pilot.pause(0.01)


async def ask(pilot, text: str = "Hi") -> None:
    chat = pilot.app.chat
    await until(pilot, lambda: chat.phase is Phase.PROMPT, "the prompt")
    await pilot.press(*text, "enter")
    await until(pilot, lambda: chat.phase is Phase.JUDGING, "the candidates")


def test_the_hint_line_follows_the_ranking_and_says_when_the_engine_is_down():
    ranked = Round(1, [], [2, 0, 1], ranking=[1])
    assert hint(Phase.JUDGING, ranked, "dpo", 0, None).startswith("Ranked so far: B · Rank them: press 1-3")
    assert hint(Phase.JUDGING, Round(1, [], [1, 0]), "dpo", 1, None) == PLACEHOLDERS[Phase.JUDGING]  # a pair: a/b
    assert hint(Phase.LOADING, None, "dpo", 0, "ctrl+r restarts it") == "The engine stopped: ctrl+r restarts it"
    assert hint(Phase.LOADING, None, "dpo", 0, None) == PLACEHOLDERS[Phase.LOADING]


def ratings(store) -> list[tuple[int, float, int]]:
    return [(r["response_id"], r["score"], r["withdrawn"]) for r in store.db["ratings"].rows_where(order_by="id")]


async def test_a_rescore_replaces_and_letters_are_not_votes_in_a_score_session(tmp_path):
    app = fake_app(tmp_path, method="ppo")
    async with app.run_test(size=(100, 30)) as pilot:
        chat, store = app.chat, app.store
        await ask(pilot)
        a, b = chat.round.response_at(0), chat.round.response_at(1)
        assert chat.prompt.placeholder.startswith("Scoring A") and "0 of 2 scored" in chat.prompt.placeholder
        await pilot.press("5")  # A scored; focus moves on to B by itself, and the hint says so
        assert chat.prompt.placeholder.startswith("Scoring B") and "1 of 2 scored" in chat.prompt.placeholder
        await pilot.press("left", "1")  # back to A: the new score replaces the first
        assert [(r, s) for r, s, w in ratings(store) if not w] == [(a, 1)]
        assert app.loop_state.pending == 1
        await pilot.press(*"abt")  # typed as if the round were over: no pick, no tie is stored
        assert not store.db["preferences"].count and chat.phase is Phase.JUDGING
        await pilot.press("4")
        assert chat.phase is Phase.PROMPT and [(r, s) for r, s, w in ratings(store) if not w] == [(a, 1), (b, 4)]
        await pilot.press("escape", "q")


async def test_take_back_opens_the_round_again_and_the_pick_is_never_trained(tmp_path):
    app = fake_app(tmp_path, update_every=1)
    async with app.run_test(size=(100, 30)) as pilot:
        chat, store, engine = app.chat, app.store, app.client
        engine.update_gate = asyncio.Event()  # the update waits: the take-back comes first
        await ask(pilot)
        await pilot.press("a")
        assert chat.phase is Phase.PROMPT and app.loop.updating
        await pilot.press("ctrl+t")
        assert chat.phase is Phase.JUDGING and chat.round is not None
        assert all("✓" not in view.border_title for view in chat.candidates.views)  # the verdict is gone
        assert store.db["preferences"].get(1)["withdrawn"] == 1 and app.loop_state.pending == 0
        await pilot.press("b")  # judged again
        engine.update_gate.set()
        await until(pilot, lambda: len(engine.updates) == 2 and not app.loop.updating, "the second update")
        chosen = [e["chosen"][0]["content"] for u in engine.updates for e in u["examples"]]
        assert chat.round is None and chosen[-1] == store.db["responses"].get(
            store.db["preferences"].get(2)["chosen_id"])["text"]
        await pilot.press("ctrl+t", "ctrl+t")  # then nothing is left to take back
        assert any("nothing" in n.message or "no judgment" in n.message for n in app._notifications)
        await pilot.press("escape", "escape", "q")


async def test_a_backlog_is_shown_and_the_status_bar_follows_the_loop(tmp_path):
    store = SessionStore.open(tmp_path / "sessions", "fake")
    conversation = store.new_conversation()
    for i in range(20):
        turn = store.add_user_turn(conversation, f"q{i}")
        x, y = store.add_responses(turn, [{"text": "x"}, {"text": "y"}], None, {})
        store.record_preference(turn, x, [y])
    engine = FakeEngine()
    engine.update_gate = asyncio.Event()
    app = ChatTrainApp(store, LoopConfig(seed=0, candidates=2, update_every=2, window=8), engine)
    async with app.run_test(size=(160, 30)) as pilot:
        await until(pilot, lambda: app.loop.updating, "the first backlog update")
        bar = app.chat.status_bar
        text = str(bar.render())
        assert "training" in text and "feedback 20/2" in text and "backlog 12" in text
        assert any("tui-align replay fake" in n.message for n in app._notifications)
        engine.update_gate.set()
        await until(pilot, lambda: not app.loop.updating, "the update")
        assert [len(u["examples"]) for u in engine.updates] == [8] and "idle" in str(bar.render())
        assert "feedback 12/2" in str(bar.render()) and "backlog 4" in str(bar.render())
        await pilot.press("escape", "q")


async def test_kto_marks_are_stored_before_they_are_shown(tmp_path):
    app = fake_app(tmp_path, method="kto", update_every=2)
    async with app.run_test(size=(100, 30)) as pilot:
        chat, store, engine = app.chat, app.store, app.client
        await ask(pilot)
        a, b = chat.round.response_at(0), chat.round.response_at(1)
        assert chat.prompt.placeholder.startswith("Marking A: + desirable, - undesirable")
        shown = []  # what each mark's title said, and whether the store held the mark by then
        for view in chat.candidates.views:
            view.mark = lambda label, css="", view=view: (shown.append((label, ratings(store)[-1][:2])),
                                                          type(view).mark(view, label, css))
        await pilot.press("plus")
        assert shown == [("👍 stored", (a, 1))] and "1 of 2 marked" in chat.prompt.placeholder
        await pilot.press(*"abt")  # letters are not votes in a mark session
        assert not store.db["preferences"].count and chat.phase is Phase.JUDGING
        await pilot.press("minus")
        assert shown[1:] == [("👎 stored", (b, 0)), ("✓", (b, 0))] and chat.phase is Phase.PROMPT
        assert store.db["responses"].get(a)["chosen"] == 1  # the desirable reply continues the conversation
        await until(pilot, lambda: engine.updates and not app.loop.updating, "the kto update")
        (update,) = engine.updates
        assert update["method"] == "kto" and [e["label"] for e in update["examples"]] == [True, False]
        await pilot.press("escape", "question_mark")
        assert "desirable / undesirable" in str(app.screen.query_one("Markdown")._markdown)
        await pilot.press("escape", "q")


async def test_grpo_scores_each_candidate_and_each_score_is_stored_before_it_is_shown(tmp_path):
    app = fake_app(tmp_path, method="grpo", candidates=3, update_every=1)
    app.client.replies = ["One.", "Two words.", "Three words here."]
    async with app.run_test(size=(140, 30)) as pilot:
        chat, store, engine = app.chat, app.store, app.client
        await ask(pilot)
        r = chat.round
        assert chat.prompt.placeholder.startswith("Scoring A (1-5)") and "0 of 3 scored" in chat.prompt.placeholder
        await pilot.press("+", "a", "t", "9")  # thumbs, letters and digits past 5 are not GRPO scores
        assert not store.db["ratings"].count and not store.db["preferences"].count
        for key, slot in (("4", 0), ("2", 1)):
            await pilot.press(key)
            (row,) = store.db.execute("select score from examples where method = 'grpo' and response_id = ?",
                                      [r.response_at(slot)]).fetchall()
            assert row[0] == int(key)  # committed ...
            assert f"{key}/5 stored" in chat.candidates.views[slot].border_title  # ... and then shown as stored
        assert chat.prompt.placeholder.startswith("Scoring C") and "2 of 3 scored" in chat.prompt.placeholder
        assert not engine.updates  # the group is not complete
        await pilot.press("5")
        await until(pilot, lambda: engine.updates and not app.loop.updating, "the grpo update")
        (group,) = engine.updates[0]["examples"]
        assert engine.updates[0]["method"] == "grpo" and sorted(group["scores"]) == [2, 4, 5]
        assert chat.phase is Phase.PROMPT
        await pilot.press("escape", "q")


async def test_a_frame_redraws_only_what_changed(tmp_path, monkeypatch):
    """The key bar is rebuilt only when its keys change; while candidates stream nothing has focus (the
    conversation's focus style would repaint every turn); a streamed token lays the screen out only when
    its reply wraps onto another line (at most every LAYOUT_EVERY s), and then the new line is on screen."""
    from tui_align.widgets import candidates
    from tui_align.widgets.candidate import CandidateView
    from tui_align.widgets.footer import KeyFooter

    monkeypatch.setattr(candidates, "LAYOUT_EVERY", 0.05)

    focused, layouts = [], []
    append, relayout = CandidateView.append, CandidateView.relayout
    monkeypatch.setattr(CandidateView, "append", lambda view, piece: (append(view, piece),
                                                                      focused.append(view.app.focused)))
    monkeypatch.setattr(CandidateView, "relayout", lambda view: (layouts.append(view), relayout(view)))
    app = fake_app(tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        chat = app.chat
        footer = chat.query_one(KeyFooter)
        await until(pilot, lambda: chat.phase is Phase.PROMPT, "the prompt")
        await pilot.pause(0.1)
        keys = list(footer.children)
        chat.refresh_bindings()  # the same keys: nothing to rebuild
        await pilot.pause(0.1)
        assert keys and list(footer.children) == keys
        await ask(pilot)
        await pilot.pause(0.1)
        assert list(footer.children) != keys and any(key.description == "pick" for key in footer.children)
        assert focused and set(focused) == {None}

        view = chat.candidates.views[0]
        body = view.body
        view.reset()
        await pilot.pause()
        layouts.clear()
        for _ in range(30):  # ~6 lines at this width
            view.append("word word ")
            await pilot.pause(0.08)
            width, height = body.size
            assert height == body.get_content_height(body.size, body.size, width), f"{view.text!r} is cut"
        assert len(layouts) == height - 1, f"{len(layouts)} layouts for 30 tokens on {height} lines"
        await pilot.press("escape", "q")
