"""The blind version arena: Bradley-Terry ratings, their intervals, and arena rounds in the loop and the TUI."""

from __future__ import annotations

import json
import math
import random
import time

import pytest
from typer.testing import CliRunner

from tests.fakes import FakeEngine
from tui_align.arena import elo, leaderboard, opponent, spearman, strengths
from tui_align.cli import app as cli
from tui_align.loop import LiveLoop, LoopConfig
from tui_align.store import SessionStore


def test_bradley_terry_by_hand():
    # v1 beat v0 three times out of four. Without a prior the MLE is p1/p0 = 3: 400 log10(3) = 190.8 Elo.
    votes = [(1, 0, 1.0)] * 3 + [(0, 1, 1.0)]
    assert strengths(votes, prior=0)[1] == pytest.approx(3.0, rel=1e-6)
    assert elo(strengths(votes, prior=0)[1]) == pytest.approx(1000 + 400 * math.log10(3), abs=1e-3)
    # A tie is half a win: 2 wins and 2 ties of 4 is 3 of 4, the same strength.
    assert strengths([(1, 0, 1.0)] * 2 + [(1, 0, 0.5)] * 2, prior=0)[1] == pytest.approx(3.0, rel=1e-6)
    # The weak prior keeps an unbeaten version finite, and below what the data alone would say.
    unbeaten = strengths([(1, 0, 1.0)] * 4)
    assert 1 < unbeaten[1] < math.inf and unbeaten[0] == 1.0
    # Transitive: v2 beats v1 as often as v1 beats v0; no prior: p2 = 9 p0.
    chain = strengths([(1, 0, 1.0)] * 3 + [(0, 1, 1.0)] + [(2, 1, 1.0)] * 3 + [(1, 2, 1.0)], prior=0)
    assert chain[2] == pytest.approx(9.0, rel=1e-5)


def test_known_strengths_are_recovered_and_the_intervals_cover_them():
    truth = {0: 0.0, 1: 60.0, 2: 150.0, 3: 250.0}  # Elo
    p = {v: 10 ** (r / 400) for v, r in truth.items()}
    runs, covered, checked, ordered = 30, 0, 0, 0
    for seed in range(runs):
        rng = random.Random(seed)
        votes = []
        for _ in range(240):
            a, b = rng.sample(sorted(truth), 2)
            votes.append((a, b, 1.0 if rng.random() < p[a] / (p[a] + p[b]) else 0.0))
        board = leaderboard(votes, samples=100, seed=seed)
        ordered += [r.version for r in board] == [3, 2, 1, 0]
        for r in board:
            if r.version:
                checked += 1
                covered += r.low <= 1000 + truth[r.version] <= r.high
    assert ordered >= 0.8 * runs
    assert covered / checked >= 0.9, f"95% intervals covered the truth in {covered}/{checked}"


def test_spearman_and_the_opponent_choice():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert opponent(0, [0], []) is None
    assert opponent(3, [0, 1, 2, 3], []) == 2  # no votes yet: the nearest earlier version
    assert opponent(3, [0, 1, 2, 3], [(3, 2, 1.0), (3, 1, 0.0)]) == 0  # then the one least compared


async def test_an_arena_round_is_blind_stored_and_trained_on(tmp_path):
    with SessionStore.open(tmp_path, "s") as store:
        engine = FakeEngine()
        loop = LiveLoop(store, engine, LoopConfig(seed=0, update_every=1, arena_every=2))
        await loop.start()
        conversation = store.new_conversation()
        first = await loop.generate(loop.begin(conversation, "One"))
        assert first.versions is None  # v0 is live: nothing earlier to compare with
        loop.pick(first, 0)
        await loop.wait_for_update()
        assert loop.state.version == 1
        arena = await loop.generate(loop.begin(conversation, "Two"))  # the 2nd prompt is an arena round
        assert sorted(arena.versions) == [0, 0, 1, 1] and arena.n == 4  # as many replies as any round
        assert [(g["version"], g["n"]) for g in engine.generated[-2:]] == [(1, 2), (0, 2)]  # half from each
        versions = {r["id"]: r["version"] for r in store.responses(arena.turn_id)}
        assert sorted(versions.values()) == [0, 0, 1, 1]
        # blind: the shown texts carry nothing the person could not see in any round (here the fake's marks)
        shown = [versions[arena.response_at(slot)] for slot in range(4)]
        picked = 3  # the last shown: its version stood for by it, the other by its first shown reply
        other = shown.index(1 - shown[picked])
        loop.pick(arena, picked)
        (vote,) = store.db["arena"].rows
        assert [vote["version_a"], vote["version_b"]] == [shown[other], shown[picked]]
        assert [vote["response_a"], vote["response_b"]] == [arena.response_at(other), arena.response_at(picked)]
        assert vote["outcome"] == "b" and store.arena_votes() == [(vote["version_a"], vote["version_b"], 0.0)]
        await loop.wait_for_update()
        examples = engine.updates[-1]["examples"]
        assert {e["chosen"][0]["content"] for e in examples[-3:]} == {arena.text_at(picked)}  # 3 training pairs too
        loop.take_back()
        assert store.arena_votes() == []  # a withdrawn vote leaves the leaderboard
        await loop.close()


async def test_the_arena_round_in_the_tui_and_the_leaderboard_screen(tmp_path):
    from tui_align.app import ChatTrainApp
    from tui_align.rounds import Phase
    from tui_align.screens.leaderboard import LeaderboardScreen

    store = SessionStore.open(tmp_path / "sessions", "arena")
    app = ChatTrainApp(store, LoopConfig(seed=0, update_every=1, arena_every=2), FakeEngine())
    async with app.run_test(size=(100, 30)) as pilot:
        chat = app.chat

        async def until(condition):
            started = time.monotonic()
            while not condition():
                assert time.monotonic() - started < 10
                await pilot.pause(0.01)

        for text, key in (("One", "a"), ("Two", "b")):
            await until(lambda: chat.phase is Phase.PROMPT and not app.loop.updating)
            await pilot.press(*text, "enter")
            await until(lambda: chat.phase is Phase.JUDGING)
            if text == "Two":  # the arena round looks like any other: as many candidates, the same keys
                assert chat.round.versions is not None and len(chat.candidates.views) == LoopConfig.candidates
                assert not any("v0" in v.border_title or "v1" in v.border_title for v in chat.candidates.views)
            await pilot.press(key)
        assert store.db["arena"].count == 1
        await pilot.press("escape", "l")
        assert isinstance(app.screen, LeaderboardScreen)
        text = str(app.screen.query_one("#leaderboard-table").get_row_at(0))
        assert "v" in text
        await pilot.press("escape")
        await pilot.press("q")


def test_leaderboard_cli(tmp_path):
    runner = CliRunner()
    with SessionStore.open(tmp_path, "s") as store:
        conversation = store.new_conversation()
        for i, outcome in enumerate(["a", "a", "b", "tie"]):
            turn = store.add_user_turn(conversation, f"q{i}")
            x, y = store.add_responses(turn, [{"text": "x"}, {"text": "y"}], [1, 0], {})
            judgment = store.record_preference(turn, x if outcome != "b" else y, [y if outcome != "b" else x])
            store.record_arena(turn, judgment, [1, 0], [x, y], outcome)
        store.record_version(1, store.versions_dir / "v0001")
    SessionStore.open(tmp_path, "empty").close()
    result = runner.invoke(cli, ["sessions", "leaderboard", "s", "--sessions-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["version"] for r in rows] == [1, 0] and rows[0]["rating"] > 1000 > rows[0]["low"] - 1000
    assert rows[0]["votes"] == 4 and rows[0]["win_rate_vs_v0"] == pytest.approx(0.625)
    table = runner.invoke(cli, ["sessions", "leaderboard", "s", "--sessions-dir", str(tmp_path)])
    assert table.exit_code == 0 and "v1" in table.output and "62%" in table.output
    none = runner.invoke(cli, ["sessions", "leaderboard", "empty", "--sessions-dir", str(tmp_path)])
    assert none.exit_code == 0 and "no arena votes" in none.output and len(none.output.strip().splitlines()) == 1
    missing = runner.invoke(cli, ["sessions", "leaderboard", "nope", "--sessions-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no session 'nope'" in missing.output


async def test_a_ranking_in_an_arena_round_is_a_vote_for_its_best_reply(tmp_path):
    with SessionStore.open(tmp_path, "s") as store:
        loop = LiveLoop(store, FakeEngine(), LoopConfig(seed=0, candidates=3, update_every=1, arena_every=2))
        await loop.start()
        conversation = store.new_conversation()
        loop.pick(await loop.generate(loop.begin(conversation, "One")), 0)
        await loop.wait_for_update()
        arena = await loop.generate(loop.begin(conversation, "Two"))
        assert sorted(arena.versions) == [0, 1, 1]
        shown = [arena.versions[c] for c in arena.shown_order]
        best = shown.index(0)  # the earlier version's one reply, ranked first
        order = [best] + [slot for slot in range(3) if slot != best]
        assert not loop.rank(arena, order[0]) and loop.rank(arena, order[1])
        (vote,) = store.db["arena"].rows
        assert vote["response_a" if best == 0 else "response_b"] == arena.response_at(best)
        assert store.arena_votes() in ([(0, 1, 1.0)], [(1, 0, 0.0)])  # v0 won, whichever was shown first
        await loop.close()


async def test_an_arena_round_of_a_one_candidate_session_shows_both_versions(tmp_path):
    with SessionStore.open(tmp_path, "s") as store:
        loop = LiveLoop(store, FakeEngine(), LoopConfig(seed=0, candidates=1, update_every=1, arena_every=2))
        await loop.start()
        conversation = store.new_conversation()
        first = await loop.generate(loop.begin(conversation, "One"))
        assert first.n == 1
        loop.edit(first, 0, "A better reply.")  # a one-reply round trains on an edit
        await loop.wait_for_update()
        assert loop.state.version == 1
        arena = await loop.generate(loop.begin(conversation, "Two"))
        assert arena.n == 2 and sorted(arena.versions) == [0, 1]
        loop.pick(arena, 0)
        assert store.db["arena"].count == 1
        await loop.close()
