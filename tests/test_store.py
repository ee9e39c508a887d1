"""SessionStore: conversation trees, feedback -> training rows, migrations, locking, durability."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from sqlite_utils import Database

from engine.protocol import UserError
from tui_align.migrations import MIGRATIONS, SCHEMA_VERSION
from tui_align.store import SessionError, SessionStore

CANDIDATES = [{"text": "Short.", "tokens": 2, "finish_reason": "stop", "ttft_s": 0.1, "tokens_per_s": 20.0},
              {"text": "A much longer reply", "tokens": 5, "finish_reason": "length", "ttft_s": 0.1, "tokens_per_s": 20.0}]


def pending_feedback(store, method: str) -> tuple[list[dict], list[int]]:
    """(examples, ids) no finished update has trained on, oldest first."""
    ids = [r["id"] for r in store.db.query("select id from examples where method = ? and withdrawn = 0 "
                                           "and update_id is null order by id", [method])]
    by_id = dict(store.feedback(method))
    return [by_id[i] for i in ids], ids


@pytest.fixture
def store(tmp_path):
    with SessionStore.open(tmp_path, "s", model="tiny", hyperparameters={"lr": 1e-4}) as s:
        yield s


def test_tree_history_and_training_rows(store):
    conv = store.new_conversation(system="Be brief.")
    t1 = store.add_user_turn(conv, "Hi")
    a, b = store.add_responses(t1, CANDIDATES, 0, {"temperature": 0.8}, shown_order=[1, 0])
    assert store.responses(t1)[1]["shown_position"] == 0  # candidate 1 was shown left
    store.record_preference(t1, a, [b])
    assert store.history(conv)[-1] == {"role": "assistant", "content": "Short."}
    t2 = store.add_user_turn(conv, "More")  # continues after the chosen reply
    c, d = store.add_responses(t2, CANDIDATES, 0, {})
    store.record_preference(t2, None, [c, d], outcome="tie")
    store.record_rating(c, 2)
    store.record_rating(d, 5)  # different scores on one turn: a pair, d over c
    store.record_demonstration(t2, "Edited.", edited_from=c)  # a demo, and a pair over each model reply
    assert store.history(conv) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Short."}, {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Edited."}]
    assert store.counts() == {"prompts": 2, "pairs": 4, "ratings": 2, "demos": 1, "updates": 0}
    examples, ids = pending_feedback(store, "dpo")
    assert [e["chosen"][0]["content"] for e in examples] == ["Short.", "A much longer reply", "Edited.", "Edited."]
    assert [e["rejected"][0]["content"] for e in examples[2:]] == [CANDIDATES[0]["text"], CANDIDATES[1]["text"]]
    assert examples[1]["prompt"][-1] == {"role": "user", "content": "More"} and len(examples[1]["prompt"]) == 4
    sft, _ = pending_feedback(store, "sft")  # the pick of t1 is a demonstration too (best-of-n)
    assert sft == [{"prompt": examples[0]["prompt"], "completion": [{"role": "assistant", "content": "Short."}]},
                   {"prompt": examples[1]["prompt"], "completion": [{"role": "assistant", "content": "Edited."}]}]
    assert [e["score"] for e in pending_feedback(store, "ppo")[0]] == [-0.5, 1.0]
    kto, _ = pending_feedback(store, "kto")  # each rated reply alone, desirable or not
    assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [("Short.", False), ("A much longer reply", True)]

    failed = store.start_update("dpo", ids[:2])
    store.finish_update(failed, "failed", error="boom")
    assert store.pending_count("dpo") == 4  # a failed update consumes nothing
    done = store.start_update("dpo", ids[:2])
    store.finish_update(done, "done", version=1, metrics={"loss": 0.6})
    store.record_version(1, store.versions_dir / "v0001", {"loss": 0.6})
    assert pending_feedback(store, "dpo")[1] == ids[2:]
    assert store.latest_version() == 1 and store.metrics_history()[0]["loss"] == 0.6
    assert [i for i, _ in store.update_window("dpo", 3)] == ids[1:]  # the newest pending, topped up
    assert store.latest_conversation() == conv
    store.log("warning", "engine restarted")
    assert store.meta["hyperparameters"] == {"lr": 1e-4} and store.meta["schema_version"] == SCHEMA_VERSION


def test_a_ranking_continues_with_the_best(store):
    conv = store.new_conversation()
    turn = store.add_user_turn(conv, "Hi")
    a, b, c = store.add_responses(turn, [{"text": "A"}, {"text": "B"}, {"text": "C"}], 0, {})
    store.record_preference(turn, a, [b, c])  # A > B > C, as the TUI stores a ranking
    store.record_preference(turn, b, [c])
    store.record_rating(c, 5)
    store.record_rating(a, 1)  # a rating pair (C over A) does not move the continuation
    assert store.history(conv)[-1]["content"] == "A" and store.counts()["pairs"] == 4


def test_sft_takes_the_first_pick_of_a_turn_but_not_a_replaced_one(store):
    conv = store.new_conversation()
    turn = store.add_user_turn(conv, "Hi")
    a, b, c = store.add_responses(turn, [{"text": "A"}, {"text": "B"}, {"text": "C"}], 0, {})
    store.record_preference(turn, a, [b, c])
    store.record_preference(turn, b, [c])  # the rest of a ranking: not a demonstration
    examples, ids = pending_feedback(store, "sft")
    assert [e["completion"][0]["content"] for e in examples] == ["A"]
    store.record_demonstration(turn, "Better.", edited_from=a)  # the edit replaces the pick
    assert [e["completion"][0]["content"] for e in pending_feedback(store, "sft")[0]] == ["Better."]


def test_pending_count_matches_pending_feedback(store):
    conv = store.new_conversation()
    for n in range(3):
        turn = store.add_user_turn(conv, f"q{n}")
        a, b = store.add_responses(turn, CANDIDATES, 0, {})
        store.record_preference(turn, a, [b]) if n != 1 else store.record_preference(turn, None, [a, b], outcome="tie")
        store.record_rating(a, 4)
        store.record_rating(b, 2)
        if n == 2:
            store.record_demonstration(turn, "Mine.", edited_from=b)
    for method in ("dpo", "sft", "ppo", "kto"):
        ids = pending_feedback(store, method)[1]
        assert store.pending_count(method) == len(ids) > 0
        done = store.start_update(method, ids[:1])
        store.finish_update(done, "done", version=1)
        assert store.pending_count(method) == len(pending_feedback(store, method)[0]) == len(ids) - 1


def test_bad_feedback_is_refused(store):
    turn = store.add_user_turn(store.new_conversation(), "Hi")
    a, _ = store.add_responses(turn, CANDIDATES, 0, {})
    with pytest.raises(UserError, match="outcome"):
        store.record_preference(turn, a, [], outcome="maybe")
    with pytest.raises(UserError, match="outside"):
        store.record_rating(a, 7, "1-5")


def test_older_schema_is_upgraded(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    db = Database(folder / "session.db")
    MIGRATIONS.apply(db, stop_before="m002_system_prompts_events_reference")  # a version-1 session
    db["session"].insert({"id": 1, "model": "tiny", "method": "dpo", "hyperparameters": "{}", "created": 1.0,
                          "tool_version": "0.0.1", "schema_version": 1})
    db["conversations"].insert({"id": 1, "created": 1.0})
    db["turns"].insert({"id": 1, "conversation_id": 1, "parent_id": None, "text": "Hi", "created": 1.0})
    db.close()
    with SessionStore.open(tmp_path, "old") as store:
        assert store.meta["schema_version"] == SCHEMA_VERSION == 7
        assert store.history(1) == [{"role": "user", "content": "Hi"}]
        store.log("info", "the events table exists now")
        store.record_version(2, store.versions_dir / "v0002")
        assert store.active_version() == 2  # no active version recorded yet: the latest


def test_kto_rows_are_backfilled_from_earlier_ratings(tmp_path):
    _old_session(tmp_path / "old", [(1, "thumbs", 0), (3, "1-5", 0), (2, "1-5", 0), (5, "1-5", 1), (-0.5, "numeric", 0)],
                 before="m006_kto_examples", schema=5).close()
    with SessionStore.open(tmp_path, "old") as store:
        rows = [(ex["completion"][0]["content"], ex["label"]) for _, ex in store.feedback("kto")]
        assert rows == [("reply 1", True), ("reply 3", False), ("reply 5", False)]  # a 3 is neutral; 4 was withdrawn
        assert store.pending_count("kto") == 3


def _old_session(folder, ratings, before="m007_grpo_examples", schema=6) -> Database:
    """A session.db as tui-align wrote it before migration `before` (by default, before GRPO): one turn,
    one reply per (score, scale, withdrawn)."""
    folder.mkdir()
    db = Database(folder / "session.db")
    MIGRATIONS.apply(db, stop_before=before)
    db["session"].insert({"id": 1, "model": "tiny", "method": "dpo", "hyperparameters": "{}", "created": 1.0,
                          "tool_version": "0.0.1", "schema_version": schema})
    db["conversations"].insert({"id": 1, "created": 1.0})
    db["turns"].insert({"id": 1, "conversation_id": 1, "parent_id": None, "text": "Hi", "created": 1.0})
    for pk, (score, scale, withdrawn) in enumerate(ratings, 1):
        db["responses"].insert({"id": pk, "turn_id": 1, "text": f"reply {pk}", "created": 1.0})
        db["ratings"].insert({"id": pk, "response_id": pk, "score": score, "scale": scale, "withdrawn": withdrawn,
                              "created": float(pk)})
    return db


def test_grpo_rows_are_backfilled_from_earlier_ratings(tmp_path):
    _old_session(tmp_path / "old", [(4, "1-5", 0), (1, "thumbs", 0), (3, "1-5", 0), (5, "1-5", 1), (2, "1-5", 0)]).close()
    with SessionStore.open(tmp_path, "old") as store:
        rows = [(ex["completion"][0]["content"], ex["score"]) for _, ex in store.feedback("grpo")]
        assert rows == [("reply 1", 4), ("reply 3", 3), ("reply 5", 2)]  # 1-5 only, a 3 too; the 5 was withdrawn
        assert store.pending_count("grpo") == 3
        assert store.scored_groups()[0][0]["scores"] == [4, 3, 2]  # oldest first: the order they were scored


def test_grpo_backfill_leaves_a_session_that_has_its_rows(tmp_path):
    db = _old_session(tmp_path / "new", [(4, "1-5", 0), (2, "1-5", 0)])
    for pk, score in ((1, 4), (2, 2)):  # made by record_rating once GRPO existed, the first already trained on
        db["examples"].insert({"method": "grpo", "source": "rating", "source_id": pk, "turn_id": 1, "response_id": pk,
                               "score": score, "update_id": 1 if pk == 1 else None, "created": float(pk)})
    before = list(db["examples"].rows)
    db.close()
    with SessionStore.open(tmp_path, "new") as store:
        assert list(store.db["examples"].rows) == before and store.meta["schema_version"] == 7
        assert store.pending_count("grpo") == 1


def test_the_active_version_follows_updates_and_rollbacks(tmp_path):
    with SessionStore.open(tmp_path, "s") as store:
        assert store.active_version() == 0
        for number in (1, 2):
            update = store.start_update("dpo", [])
            store.finish_update(update, "done", version=number)
            store.record_version(number, store.versions_dir / f"v{number:04d}")
        assert store.active_version() == 2
        store.set_active_version(1)  # a rollback
        store.finish_update(store.start_update("dpo", []), "failed", error="boom")
    with SessionStore.open(tmp_path, "s") as store:  # and it survives a restart
        assert store.active_version() == 1 and store.latest_version() == 2


def test_newer_corrupt_and_foreign_files_are_refused(tmp_path):
    SessionStore.open(tmp_path, "new").close()
    Database(tmp_path / "new" / "session.db")["_sqlite_migrations"].insert(
        {"migration_set": "tui-align-session", "name": "m099_from_the_future", "applied_at": "2030"})
    with pytest.raises(SessionError, match="newer tui-align"):
        SessionStore.open(tmp_path, "new")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "session.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SessionError, match="not a readable SQLite database"):
        SessionStore.open(tmp_path, "corrupt", readonly=True)
    (tmp_path / "foreign").mkdir()
    sqlite3.connect(tmp_path / "foreign" / "session.db").execute("create table t (x)")
    with pytest.raises(SessionError, match="not a tui-align session"):
        SessionStore.open(tmp_path, "foreign")
    with pytest.raises(SessionError, match="no session"):
        SessionStore.open(tmp_path, "missing", create=False)


WRITER = textwrap.dedent("""
    import sys
    from tui_align.store import SessionStore
    store = SessionStore.open(sys.argv[1], "live")
    conv = store.new_conversation()
    print("ready", flush=True)
    if sys.argv[2] == "hold":
        sys.stdin.readline()
    else:
        while True:
            turn = store.add_user_turn(conv, "prompt")
            a, b = store.add_responses(turn, [{"text": "a"}, {"text": "b"}], 0, {})
            print(store.record_preference(turn, a, [b]), flush=True)  # told only after the commit
""")


def _writer(tmp_path, mode):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd())


def test_second_writer_is_refused_readers_are_not(tmp_path):
    holder = _writer(tmp_path, "hold")
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(SessionError, match=f"open for writing in another process \\(pid {holder.pid}\\)"):
            SessionStore.open(tmp_path, "live")
        with SessionStore.open(tmp_path, "live", readonly=True) as reader:
            assert reader.latest_conversation() == 1
    finally:
        holder.communicate("\n", timeout=30)
    SessionStore.open(tmp_path, "live").close()  # the lock went with the process


def test_kill_9_loses_no_committed_row(tmp_path):
    writer = _writer(tmp_path, "loop")
    assert writer.stdout.readline().strip() == "ready"
    acknowledged = [int(writer.stdout.readline()) for _ in range(25)]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    with SessionStore.open(tmp_path, "live") as store:  # writable again: the kernel dropped the lock
        stored = {row["judgment_id"] for row in store.db["preferences"].rows}
        assert set(acknowledged) <= stored
        assert store.pending_count("dpo") >= 25
        assert json.loads(store.db["preferences"].get(acknowledged[-1])["shown_order"])


def test_replay_samples_older_trained_rows_within_the_bound(store):
    conversation = store.new_conversation()
    for i in range(40):
        turn = store.add_user_turn(conversation, f"q{i}")
        a, b = store.add_responses(turn, [{"text": "good"}, {"text": "bad"}], None, {})
        store.record_preference(turn, a, [b])
    ids = [i for i, _ in store.update_window("dpo", 40)]
    store.finish_update(store.start_update("dpo", ids), "done", version=1)
    turn = store.add_user_turn(conversation, "new")
    a, b = store.add_responses(turn, [{"text": "good"}, {"text": "bad"}], None, {})
    store.record_preference(turn, a, [b])
    window = store.update_window("dpo", 4, replay=3, rng=random.Random(1))
    assert len(window) == 7 and window[-1][1]["prompt"][-1]["content"] == "new"
    assert len({i for i, _ in window}) == 7


def test_replay_edits_brings_back_the_newest_edits_pairs_once_trained(store):
    conversation = store.new_conversation()
    edits = []
    for i in range(3):
        turn = store.add_user_turn(conversation, f"e{i}")
        a, b = store.add_responses(turn, [{"text": "plain"}, {"text": "other"}], None, {})
        edits.append(store.record_demonstration(turn, f"edited {i}?", edited_from=a))
    for i in range(20):
        turn = store.add_user_turn(conversation, f"q{i}")
        a, b = store.add_responses(turn, [{"text": "good"}, {"text": "bad"}], None, {})
        store.record_preference(turn, a, [b])
    assert not [e for _, e in store.update_window("dpo", 4, replay_edits=2) if e["prompt"][-1]["content"][0] == "e"]
    ids = [i for i, _ in store.update_window("dpo", 40)]  # pending edits are in the window, not replayed
    store.finish_update(store.start_update("dpo", ids), "done", version=1)
    store.withdraw_demonstration(edits[2])  # taken back: the two before it are the newest edits
    window = store.update_window("dpo", 4, replay_edits=2)
    replayed = [e for _, e in window if e["prompt"][-1]["content"][0] == "e"]
    assert len(window) == 6 and len(replayed) == 2  # each edit: over the reply it corrects, not the other reply
    assert {e["prompt"][-1]["content"] for e in replayed} == {"e0", "e1"}
    assert {(e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in replayed} == {
        ("edited 0?", "plain"), ("edited 1?", "plain")}
    sft_ids = [i for i, _ in store.update_window("sft", 40)]
    store.finish_update(store.start_update("sft", sft_ids), "done", version=2)
    sft = store.update_window("sft", 1, replay_edits=2)
    assert sorted(e["completion"][0]["content"] for _, e in sft) == ["edited 0?", "edited 1?", "good"]
