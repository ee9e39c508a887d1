"""The LiveLoop against a fake engine client: every branch of a judgment and of the loop, in milliseconds."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fakes import FakeEngine
from tui_align.client import EngineError
from tui_align.loop import LiveLoop, LoopConfig
from tui_align.migrations import MIGRATIONS
from tui_align.store import SessionStore


@pytest.fixture
def store(tmp_path):
    with SessionStore.open(tmp_path, "s") as s:
        yield s


def make_loop(store, engine=None, **config) -> tuple[LiveLoop, FakeEngine, list]:
    engine = engine or FakeEngine()
    states = []
    loop = LiveLoop(store, engine, LoopConfig(**{"candidates": 2, "window": 8, "update_every": 100, "update_after": 0, "seed": 0, **config}), on_state=states.append)
    return loop, engine, states


async def judged_round(loop, store, text="Hi", conversation=None):
    conversation = conversation or store.new_conversation(loop.config.system)
    round_ = await loop.generate(loop.begin(conversation, text))
    await asyncio.sleep(0)  # the reference scoring the loop started meanwhile
    return round_


async def settle(loop):
    await asyncio.sleep(0)
    await loop.wait_for_update()
    await asyncio.sleep(0)


def updates(store) -> list[dict]:
    return list(store.db["updates"].rows_where(order_by="id"))


async def test_a_pick_is_stored_and_every_k_rows_train_on_the_window(store):
    loop, engine, states = make_loop(store, update_every=2)
    assert await loop.start() and states[-1].engine == "ready"
    r = await judged_round(loop, store)
    assert r.response_ids and [c["text"] for c in r.results] == ["Short.", "A longer reply here."]
    assert engine.scored and engine.scored[0][0]["prompt"] == r.prompt  # reference scored while the person reads
    loop.pick(r, 1)
    (pref,) = store.db["preferences"].rows
    assert pref["chosen_id"] == r.response_at(1) and pref["rejected_id"] == r.response_at(0)
    assert loop.state.pending == 1 and not loop.updating and r.complete
    loop.pick(await judged_round(loop, store, "Again"), 0)
    assert loop.updating  # the second pending row starts an update
    await settle(loop)
    (update,) = engine.updates
    assert update["method"] == "dpo" and len(update["examples"]) == 2 and update["hyperparameters"] is None
    assert "ref_chosen_logps" not in update["examples"][0]  # the engine owns the reference log-probs
    assert loop.state.version == 1 and store.latest_version() == 1 and store.active_version() == 1
    assert loop.state.pending == 0 and updates(store)[0]["status"] == "done"
    # the next update trains on the new row, topped up with the latest trained ones
    loop.pick(await judged_round(loop, store, "Third"), 0)
    loop.pick(await judged_round(loop, store, "Fourth"), 0)
    await settle(loop)
    assert len(engine.updates) == 2 and len(engine.updates[1]["examples"]) == 4


async def test_a_sparse_signal_trains_after_update_after_rounds(store):
    """Ties give no rows: the one pick of four rounds trains once the fourth is judged, not at update_every."""
    loop, engine, _ = make_loop(store, update_every=6, update_after=4)
    await loop.start()
    loop.pick(await judged_round(loop, store, "One"), 0)
    for text in ("Two", "Three"):
        loop.outcome(await judged_round(loop, store, text), "tie")
        await settle(loop)
        assert not engine.updates and loop.state.pending == 1
    loop.outcome(await judged_round(loop, store, "Four"), "tie")
    await settle(loop)
    (update,) = engine.updates
    assert len(update["examples"]) == 1 and loop.rounds_since_update == 0
    loop.pick(await judged_round(loop, store, "Five"), 0)  # the count starts again with the update
    await settle(loop)
    assert len(engine.updates) == 1


async def test_ranking_of_three_candidates_makes_every_pair(store):
    loop, engine, _ = make_loop(store, candidates=3)
    await loop.start()
    r = await judged_round(loop, store)
    assert r.n == 3
    assert not loop.rank(r, 2) and not store.db["preferences"].count  # nothing stored until the ranking is complete
    assert loop.rank(r, 0)
    assert r.ranking == [2, 0, 1] and r.complete
    pairs = {(p["chosen_id"], p["rejected_id"]) for p in store.db["preferences"].rows}
    best, mid, worst = (r.response_at(s) for s in r.ranking)
    assert pairs == {(best, mid), (best, worst), (mid, worst)}
    assert loop.state.pending == 3
    assert store.history(store.latest_conversation())[-1]["content"] == r.text_at(2)


async def test_picking_the_best_of_four_beats_the_other_three(store):
    loop, engine, _ = make_loop(store, candidates=4)
    await loop.start()
    r = await judged_round(loop, store)
    loop.pick(r, 3)  # the fourth letter, d
    pairs = {(p["chosen_id"], p["rejected_id"]) for p in store.db["preferences"].rows}
    assert pairs == {(r.response_at(3), r.response_at(s)) for s in range(3)} and loop.state.pending == 3


@pytest.mark.parametrize("kind, outcome", [("tie", "tie"), ("both_bad", "both_bad"), ("skip", "skipped")])
async def test_tie_both_bad_and_skip_are_kept_never_trained(store, kind, outcome):
    loop, _, _ = make_loop(store)
    await loop.start()
    r = await judged_round(loop, store)
    loop.outcome(r, kind)
    (pref,) = store.db["preferences"].rows
    assert pref["outcome"] == outcome and loop.state.pending == 0 and r.complete
    chosen = [row["id"] for row in store.db["responses"].rows_where("chosen = 1")]
    assert chosen == ([r.response_at(0)] if kind == "tie" else [])  # a tie continues with the left reply


async def test_regenerate_is_a_new_round_on_the_same_turn(store):
    loop, engine, _ = make_loop(store)
    await loop.start()
    first = await judged_round(loop, store)
    again = await loop.generate(loop.round_for(first.turn_id))
    assert again.turn_id == first.turn_id and set(again.response_ids).isdisjoint(first.response_ids)
    assert len(store.responses(first.turn_id)) == 4 and engine.generated[0]["seed"] != engine.generated[1]["seed"]


async def test_an_edit_is_a_demonstration_preferred_over_every_reply_shown(store):
    loop, _, _ = make_loop(store, method="sft")
    await loop.start()
    r = await judged_round(loop, store)
    loop.edit(r, 0, "Better.")
    (demo,) = store.db["demonstrations"].rows
    assert demo["edited_from"] == r.response_at(0)
    assert [e["completion"][0]["content"] for _, e in store.update_window("sft", 8)] == ["Better."]
    pairs = [e for _, e in store.update_window("dpo", 8)]
    assert [e["chosen"][0]["content"] for e in pairs] == ["Better.", "Better."]
    originals = [store.db["responses"].get(r.response_at(slot))["text"] for slot in (0, 1)]
    assert [e["rejected"][0]["content"] for e in pairs] == originals  # the edited one first
    assert loop.state.pending == 1


async def test_sft_trains_on_picked_replies_and_demonstrations(store):
    loop, engine, _ = make_loop(store, method="sft", update_every=2)
    await loop.start()
    r = await judged_round(loop, store)
    loop.pick(r, 1)  # best-of-n: the picked reply is a demonstration
    loop.edit(await judged_round(loop, store, "More"), 0, "Written by me.")
    await settle(loop)
    (update,) = engine.updates
    assert update["method"] == "sft"
    assert [e["completion"][0]["content"] for e in update["examples"]] == [r.text_at(1), "Written by me."]


async def test_ppo_scores_and_a_rescore_replaces_the_earlier_one(store):
    loop, engine, _ = make_loop(store, method="ppo", update_every=2)
    await loop.start()
    r = await judged_round(loop, store)
    assert not engine.scored  # reference log-probs are a DPO concern
    assert not loop.rate(r, 0, 5)
    assert not loop.rate(r, 0, 1)  # the person went back to A and scored it again
    assert loop.state.pending == 1 and not loop.updating  # one reply, one score in force
    assert loop.rate(r, 1, 4)  # every reply scored: complete, the best continues the conversation
    await settle(loop)
    (update,) = engine.updates
    assert sorted(e["score"] for e in update["examples"]) == [-1.0, 0.5]  # 1/5 and 4/5
    ratings = [(g["score"], g["withdrawn"]) for g in store.db["ratings"].rows_where(order_by="id")]
    assert ratings == [(5, 1), (1, 0), (4, 0)]  # the replaced score is kept, withdrawn
    assert store.history(store.latest_conversation())[-1]["content"] == r.text_at(1)
    # the ratings pair up (4 over 1) for DPO, once: the replaced 5 made no pair
    assert [(p["chosen_id"], p["rejected_id"]) for p in store.db["preferences"].rows_where("withdrawn = 0")] == [
        (r.response_at(1), r.response_at(0))]


async def test_kto_marks_each_reply_and_updates_at_the_persons_pace(store):
    loop, engine, _ = make_loop(store, method="kto", update_every=2, candidates=3)
    await loop.start()
    r = await judged_round(loop, store)
    assert not engine.scored  # reference log-probs are the KTO trainer's own
    assert not loop.rate(r, 0, 1, "thumbs") and loop.state.pending == 1 and not loop.updating
    assert not loop.rate(r, 0, 0, "thumbs")  # A again: the new mark replaces the first
    assert loop.state.pending == 1 and not loop.updating
    assert not loop.rate(r, 2, 1, "thumbs")  # two marks in force: an update starts while B waits
    assert loop.updating
    assert loop.rate(r, 1, 0, "thumbs") and r.complete  # every reply marked; the desirable one continues
    await settle(loop)
    assert store.history(store.latest_conversation())[-1]["content"] == r.text_at(2)
    (first,) = engine.updates  # its window is read when it starts: B was marked by then
    assert first["method"] == "kto" and first["examples"][0]["prompt"] == r.prompt
    assert [(e["completion"][0]["content"], e["label"]) for e in first["examples"]] == [
        (r.text_at(0), False), (r.text_at(2), True), (r.text_at(1), False)]
    two = await judged_round(loop, store, "Two")
    loop.rate(two, 0, 1, "thumbs")
    assert loop.state.pending == 1 and not loop.updating  # one new mark: not yet
    loop.rate(two, 1, 1, "thumbs")
    await settle(loop)
    second = engine.updates[1]  # the two new marks, topped up with the trained ones
    assert [e["label"] for e in second["examples"]] == [False, True, False, True, True]
    assert loop.state.pending == 0 and loop.state.version == 2 and [u["status"] for u in updates(store)] == ["done"] * 2
    loop.take_back()  # the last mark, already trained on: never again
    assert [e["label"] for _, e in store.update_window("kto", 8)] == [False, True, False, True]


async def test_grpo_trains_once_the_group_is_scored_and_sends_whole_groups(store):
    loop, engine, _ = make_loop(store, method="grpo", candidates=3, update_every=2)
    await loop.start()
    r = await judged_round(loop, store)
    assert not engine.scored  # the reference is the engine's business in grpo (adapter disabled)
    assert not loop.rate(r, 0, 5) and not loop.rate(r, 1, 2)
    assert loop.state.pending == 2 and not loop.updating  # two rows wait, but the group is not complete
    assert loop.rate(r, 2, 1)
    await settle(loop)
    (update,) = engine.updates
    assert update["method"] == "grpo"
    (group,) = update["examples"]
    texts = {r.response_at(s): r.text_at(s) for s in range(3)}
    assert group["prompt"] == r.prompt and sorted(group["scores"]) == [1, 2, 5]
    assert {c[0]["content"]: s for c, s in zip(group["completions"], group["scores"])} == {
        texts[r.response_at(0)]: 5, texts[r.response_at(1)]: 2, texts[r.response_at(2)]: 1}
    # A re-score after the update: the next window brings the whole group back, with the new score.
    second = await judged_round(loop, store, "Again")
    loop.rate(second, 0, 3)
    loop.rate(second, 1, 3)
    loop.rate(r, 1, 4)
    assert loop.rate(second, 2, 4)
    await settle(loop)
    groups = engine.updates[-1]["examples"]
    assert sorted(map(sorted, (g["scores"] for g in groups))) == [[1, 4, 5], [3, 3, 4]]
    with pytest.raises(Exception, match="outside the 1-5 scale"):
        loop.rate(second, 0, 6)


async def test_taking_back_a_judgment_before_and_after_an_update(store):
    loop, engine, _ = make_loop(store, update_every=2)
    await loop.start()
    r = await judged_round(loop, store)
    loop.pick(r, 0)
    judgment = loop.take_back()
    assert judgment.round is r and not r.complete and loop.state.pending == 0
    assert store.db["preferences"].get(1)["withdrawn"] == 1
    assert not list(store.db["responses"].rows_where("chosen = 1"))  # the round is open again
    loop.pick(r, 1)  # judged again, the other way
    two = await judged_round(loop, store, "Two")
    loop.pick(two, 0)
    await settle(loop)
    assert [e["chosen"][0]["content"] for e in engine.updates[0]["examples"]] == [r.text_at(1), two.text_at(0)]
    loop.take_back()  # already trained on: left out of every later window
    loop.pick(await judged_round(loop, store, "Three"), 0)
    loop.pick(await judged_round(loop, store, "Four"), 0)
    await settle(loop)
    assert len(engine.updates[1]["examples"]) == 3  # two new rows and one earlier, not the withdrawn one
    assert all(e["prompt"][-1]["content"] != "Two" for e in engine.updates[1]["examples"])
    assert loop.take_back() and loop.take_back() and loop.take_back() and loop.take_back() is None


async def test_rollback_goes_to_the_parent_version(store):
    loop, engine, _ = make_loop(store, update_every=1)
    await loop.start()
    loop.pick(await judged_round(loop, store), 0)
    await settle(loop)
    loop.pick(await judged_round(loop, store, "Two"), 0)
    await settle(loop)
    assert loop.state.version == 2
    assert await loop.rollback() == "rolled back to v1"
    assert loop.state.version == 1 and store.active_version() == 1
    assert await loop.rollback() == "rolled back to v0"
    assert await loop.rollback() == "already at v0, the base model"


async def test_engine_death_during_an_update_and_restart(store):
    loop, engine, states = make_loop(store, update_every=1)
    await loop.start()
    engine.update_gate = asyncio.Event()
    loop.pick(await judged_round(loop, store), 0)
    await asyncio.sleep(0)
    assert loop.updating and states[-1].activity == "training"
    engine.die(-9, "Traceback...\n  warnings.warn(\nRuntimeError: out of memory")
    engine.update_gate.set()
    await settle(loop)
    assert loop.state.engine == "error" and loop.state.activity == "error"
    (update,) = updates(store)
    assert update["status"] == "failed" and store.pending_count("dpo") == 1  # nothing consumed
    assert any("RuntimeError: out of memory" in e["message"] for e in store.db["events"].rows_where("level = 'error'"))
    engine.update_gate = None
    assert await loop.start(restart=True) and loop.state.engine == "ready"
    await settle(loop)  # the pending row is trained once the engine is back
    assert loop.state.version == 1 and updates(store)[-1]["status"] == "done"


async def test_a_death_with_no_request_in_flight_is_noticed(store):
    loop, engine, _ = make_loop(store)
    await loop.start()
    engine.die(1)
    loop.check_engine()
    assert loop.state.engine == "error"
    with pytest.raises(Exception):
        await judged_round(loop, store)


async def test_the_exit_we_ask_for_on_quit_is_not_a_death(store):
    loop, engine, states = make_loop(store)
    await loop.start()
    closing = asyncio.create_task(loop.close())
    await asyncio.sleep(0)
    loop.check_engine()  # the views' timer, firing while the engine shuts down
    await closing
    loop.check_engine()
    assert loop.state.engine == "stopping" and "error" not in [s.engine for s in states]
    assert not list(store.db["events"].rows_where("level = 'error'"))


async def test_a_failed_update_consumes_nothing(store):
    loop, engine, _ = make_loop(store, update_every=1)
    notices = []
    loop.on_notice = lambda text, severity: notices.append((severity, text))
    await loop.start()
    engine.fail_next["update"] = EngineError("non_finite_loss", "the loss is NaN")
    loop.pick(await judged_round(loop, store), 0)
    await settle(loop)
    assert updates(store)[0]["status"] == "failed" and loop.state.pending == 1 and loop.state.version == 0
    assert loop.state.engine == "ready" and any(s == "warning" and "discarded" in t for s, t in notices)
    assert loop.train_now() is None  # `u` retries it
    await settle(loop)
    assert loop.state.version == 1 and loop.state.pending == 0


async def test_a_backlog_fills_the_windows_of_updates_that_come_at_the_persons_pace(store):
    conversation = store.new_conversation()
    for i in range(30):  # as `sessions import` leaves it: 30 pairs nobody trained on
        turn = store.add_user_turn(conversation, f"q{i}")
        a, b = store.add_responses(turn, [{"text": "good"}, {"text": "bad"}], None, {})
        store.record_preference(turn, a, [b])
    loop, engine, states = make_loop(store, update_every=2, window=8)
    notices = []
    loop.on_notice = lambda text, severity: notices.append(text)
    assert loop.state.pending == 30 and loop.state.backlog == 22
    engine.update_gate = asyncio.Event()  # the first update is still training when the person picks
    await loop.start()
    assert any("tui-align replay s" in n for n in notices)  # the person is told, and pointed at replay
    assert loop.updating  # one update on what was left, at start
    r = await judged_round(loop, store, "Hi")  # the person goes on meanwhile, never waiting
    loop.pick(r, 0)
    engine.update_gate.set()
    await settle(loop)
    assert [len(u["examples"]) for u in engine.updates] == [8]  # one new row: not yet an update
    loop.pick(await judged_round(loop, store, "Again"), 1)
    await settle(loop)
    await settle(loop)
    sizes = [len(u["examples"]) for u in engine.updates]
    assert sizes == [8, 8] and loop.state.pending == 32 - 16  # no update of its own: no version per 8 rows
    # the newest rows go first: both of the person's picks, then the backlog
    prompts = [e["prompt"][-1]["content"] for e in engine.updates[1]["examples"]]
    assert "Hi" in prompts and "Again" in prompts and sum(p.startswith("q") for p in prompts) == 6


async def test_a_simulate_session_resumes_in_chat_train_and_trains(tmp_path):
    # a session as simulate wrote it before metadata had its own column: its run in the overrides
    store = SessionStore.open(tmp_path, "sim")
    store.close()
    from sqlite_utils import Database

    db = Database(tmp_path / "sim" / "session.db")
    for table in db.table_names():
        db[table].drop()
    MIGRATIONS.apply(db, stop_before="m004_examples_metadata_withdrawn")
    db["session"].insert({"id": 1, "method": "dpo", "created": 0.0, "schema_version": 3,
                          "hyperparameters": json.dumps({"simulate": {"rounds": 4}, "judge": "shorter", "lr": 1e-4})})
    conversation = db["conversations"].insert({"created": 0.0}).last_pk
    turn = db["turns"].insert({"conversation_id": conversation, "text": "Hi", "created": 0.0}).last_pk
    a = db["responses"].insert({"turn_id": turn, "text": "A", "source": "model", "chosen": 1, "created": 0.0}).last_pk
    b = db["responses"].insert({"turn_id": turn, "text": "B", "source": "model", "chosen": 0, "created": 0.0}).last_pk
    pick = db["preferences"].insert({"turn_id": turn, "chosen_id": a, "rejected_id": b, "outcome": "chosen",
                                     "origin": "pick", "created": 0.0}).last_pk
    db["preferences"].update(pick, {"judgment_id": pick})
    db["updates"].insert({"method": "dpo", "feedback_ids": json.dumps([pick]), "status": "done", "started": 0.0})
    db.close()

    with SessionStore.open(tmp_path, "sim") as store:  # upgraded on open
        assert store.meta["metadata"] == {"simulate": {"rounds": 4}, "judge": "shorter"}
        assert store.overrides == {"lr": 1e-4}  # a real training override stays one
        assert store.pending_count("dpo") == 0 and store.pending_count("sft") == 1  # consumed by the old update
        loop, engine, _ = make_loop(store, update_every=1)
        await loop.start()
        loop.pick(await judged_round(loop, store), 0)
        await settle(loop)
        (update,) = engine.updates
        assert update["hyperparameters"] == {"lr": 1e-4} and len(update["examples"]) == 2
        assert store.db["updates"].get(2)["status"] == "done"
