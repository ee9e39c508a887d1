"""`tui-align simulate` end to end on the tiny model, and the judges it calls."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from engine.protocol import UserError
from tui_align.cli import app
from tui_align.judges import Reply, best_of, checked_pick, load_judge, longer, shorter
from tui_align.store import SessionStore

runner = CliRunner()


def test_builtin_judges_see_the_finish_reason():
    done, cut = Reply("Paris.", "stop", 2), Reply("The capital of France is", "length", 5)
    assert shorter("q", done, cut) == 0 and shorter("q", cut, done) == 1
    assert longer("q", done, cut) == 1
    assert shorter("q", cut, cut) is None  # two cut-off fragments: their real lengths are unknown
    assert shorter("q", Reply("ab", "stop"), Reply("a", "stop")) == 1 and shorter("q", "a", "a") is None
    assert longer("q", Reply("ab", "stop"), Reply("a", "stop")) == 0


def test_best_of_n_is_the_knockout_winner_of_the_pairwise_judge():
    replies = [Reply(t, "stop") for t in ("a b c", "a", "a b", "a b c d")]
    assert best_of(shorter, "shorter", "q", replies) == 1 and best_of(longer, "longer", "q", replies) == 3
    same = [Reply("x", "stop")] * 3
    assert best_of(shorter, "shorter", "q", same) is None  # no reply beats another: a tie, never trained on
    assert best_of(shorter, "shorter", "q", [Reply("xy", "stop"), Reply("xy", "stop"), Reply("z", "stop")]) == 2


def test_held_out_comparison_is_blind_and_counts_ties_as_half():
    from tui_align.heldout import Person, compare
    from tui_align.loop import LoopConfig

    new = [[Reply("a", "stop"), Reply("ab", "stop")], [Reply("abc", "stop"), Reply("x", "stop")]]
    old = [[Reply("aa", "stop"), Reply("ab", "stop")], [Reply("ab", "stop"), Reply("xyz", "stop")]]
    result = compare(LoopConfig(seed=0), Person(shorter, "shorter"), ["p", "q"], new, old)
    assert result == {"comparisons": 4, "wins": 2, "ties": 1, "losses": 1, "win_rate": 2.5 / 4}
    for seed in range(5):  # the shown order is random, the verdicts are not
        assert compare(LoopConfig(seed=seed), Person(shorter, "shorter"), ["p", "q"], new, old) == result


async def test_base_nll_reads_every_nonempty_reply_with_its_end_of_turn():
    from tui_align.heldout import base_nll
    from tui_align.loop import LoopConfig

    class Client:
        async def score_reference(self, rows):
            self.rows = rows
            return [{"ref_chosen_logps": -2.0 * len(row["chosen"]), "ref_rejected_logps": 0.0} for row in rows]

    client = Client()
    replies = [[Reply("ab", "stop", 2), Reply("", "stop", 0)], [Reply("abcd", "length", 4), Reply("abc", "stop", 3)]]
    nll, read = await base_nll(LoopConfig(seed=0, system="Be brief."), client, ["p", "q"], replies)
    assert read == 3 and nll == pytest.approx(2.0 * 9 / (9 + 3))  # 9 tokens and 3 ends of turn
    assert client.rows[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "p"}]
    assert [row["chosen"] for row in client.rows] == ["ab", "abcd", "abc"]


def test_load_judge(tmp_path):
    assert load_judge("shorter") is shorter
    (tmp_path / "mine.py").write_text("def pick(prompt, a, b):\n    return 1\n")
    assert load_judge(f"{tmp_path / 'mine.py'}:pick")("q", "a", "b") == 1
    assert load_judge("tui_align.judges:longer") is longer
    with pytest.raises(UserError, match="returned 'x'"):
        checked_pick(lambda p, a, b: "x", "mine", "q", "a", "b")
    with pytest.raises(UserError, match="raised ZeroDivisionError"):
        checked_pick(lambda p, a, b: 1 / 0, "mine", "q", "a", "b")
    for spec, message in [("nonsense", "use shorter"), (f"{tmp_path / 'none.py'}:f", "no such file"),
                          (f"{tmp_path / 'mine.py'}:missing", "no function missing"), ("no_such_mod:f", "cannot import")]:
        with pytest.raises(UserError, match=message):
            load_judge(spec)


def test_bad_flags_exit_2(tmp_path):
    for args, message in [(["--judge", "nonsense"], "--judge nonsense"), (["--judge", "shorter", "--rounds", "0"], "--rounds"),
                          (["--judge", "shorter", "--prompts", str(tmp_path / "none.txt")], "no such file"),
                          (["--judge", "shorter", "--method", "ppo"], "--method ppo: choose dpo or kto or grpo"),
                          (["--judge", "shorter", "--method", "grpo", "--rpo-alpha", "1"], "--rpo-alpha is a DPO option")]:
        result = runner.invoke(app, ["simulate", *args, "--sessions-dir", str(tmp_path)])
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_simulate_stores_picks_and_advances_the_version(tmp_path, tiny_model_dir):
    # The tiny random model never finishes a reply, so the built-in judges would decline every pair.
    (tmp_path / "judge.py").write_text("def pick(prompt, a, b):\n    return 0 if len(a) <= len(b) else 1\n")
    (tmp_path / "prompts.txt").write_text("Say hi.\nName a fruit.\n")
    result = runner.invoke(app, [
        "simulate", "--judge", f"{tmp_path / 'judge.py'}:pick", "--rounds", "4", "--candidates", "2", "--update-every", "2", "--window", "8",
        "--session", "sim", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--eval-prompts", "2",
        "--prompts", str(tmp_path / "prompts.txt"), "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "win rate of v2 vs v0 on 4 held-out comparisons" in result.output
    with SessionStore.open(tmp_path, "sim", readonly=True) as store:
        assert store.counts() == {"prompts": 4, "pairs": 4, "ratings": 0, "demos": 0, "updates": 2}
        assert store.latest_version() == 2 and (store.versions_dir / "v0002" / "adapter_model.safetensors").exists()
        responses = list(store.db["responses"].rows)
        assert len(responses) == 8 and all(r["finish_reason"] for r in responses)
        assert {r["version"] for r in responses} == {0, 1}  # rounds 3-4 came from the first update's version
        assert store.pending_count("dpo") == 0  # both updates finished: all four pairs consumed
        (_, example), *_ = store.feedback("dpo")
        assert example["prompt"][0]["role"] == "system" and example["prompt"][1]["content"] in ("Say hi.", "Name a fruit.")
        assert any("win rate" in e["message"] for e in store.db["events"].rows)
        # what simulate ran is metadata, never sent to the engine as a training override
        assert store.meta["metadata"]["judge"].endswith(":pick") and store.overrides == {}
        assert all(len(json.loads(u["feedback_ids"])) <= 8 for u in store.db["updates"].rows)


def test_simulate_replay_adds_older_trained_rows_to_a_later_update(tmp_path, tiny_model_dir):
    (tmp_path / "judge.py").write_text("def pick(prompt, a, b):\n    return 0 if len(a) <= len(b) else 1\n")
    (tmp_path / "prompts.txt").write_text("Say hi.\nName a fruit.\n")
    result = runner.invoke(app, [
        "simulate", "--judge", f"{tmp_path / 'judge.py'}:pick", "--rounds", "5", "--candidates", "2", "--update-every", "1",
        "--window", "1", "--replay", "2", "--session", "sim", "--model", str(tiny_model_dir), "--max-new-tokens", "4",
        "--eval-prompts", "0", "--prompts", str(tmp_path / "prompts.txt"), "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with SessionStore.open(tmp_path, "sim", readonly=True) as store:
        sizes = [len(json.loads(u["feedback_ids"])) for u in store.db["updates"].rows]
        assert sizes[0] == 1 and max(sizes) > 1 and all(n <= 3 for n in sizes), sizes  # window 1 + up to 2 replayed


def test_simulate_with_an_editor_stores_demonstrations_and_a_learning_curve(tmp_path, tiny_model_dir):
    (tmp_path / "judge.py").write_text("def pick(prompt, a, b):\n    return 0 if len(a) <= len(b) else 1\n")
    (tmp_path / "editor.py").write_text(
        "calls = []\n"
        "def ask(prompt, reply):\n"
        "    calls.append(1)\n"
        "    return reply + ' What do you think?' if len(calls) % 3 == 1 else None\n")
    result = runner.invoke(app, [
        "simulate", "--judge", f"{tmp_path / 'judge.py'}:pick", "--editor", f"{tmp_path / 'editor.py'}:ask",
        "--rounds", "4", "--candidates", "2", "--update-every", "2", "--window", "8", "--session", "ed", "--model", str(tiny_model_dir),
        "--max-new-tokens", "6", "--eval-prompts", "2", "--curve-every", "2", "--arena-every", "0",
        "--seed", "3", "--sessions-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "after 2 judgments" in result.output and "learning curve (judgments: win rate vs v0): 2:" in result.output
    assert "repeated trigrams" in result.output and "distinct words" in result.output
    assert len(re.findall(r"trigrams shared with other prompts' replies [\d.]+%", result.output)) == 2
    nlls = [float(x) for x in re.findall(r"base-model NLL ([\d.]+) nats/token", result.output)]
    assert len(nlls) == 2 and all(0 < x < 20 for x in nlls), result.output  # the final's and v0's, as the base reads them
    lines = [json.loads(line) for line in (tmp_path / "ed" / "heldout.jsonl").read_text().splitlines()]
    final = int(re.search(r"win rate of v(\d+) vs v0", result.output).group(1))
    assert {line["version"] for line in lines} == {0, final} and len(lines) == 2 * 2 * 2  # 2 prompts, 2 samples each
    assert all(line["finish_reason"] in ("stop", "length") and isinstance(line["text"], str) for line in lines)
    assert "held-out replies, to read:" in result.output
    with SessionStore.open(tmp_path, "ed", readonly=True) as store:
        demos = list(store.db["demonstrations"].rows)
        assert demos and all(d["text"].endswith("What do you think?") and d["edited_from"] for d in demos)
        assert store.meta["metadata"]["editor"].endswith(":ask")
    bad = runner.invoke(app, ["simulate", "--judge", "shorter", "--editor", "nope", "--sessions-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "--editor nope" in bad.stderr


async def test_simulate_kto_marks_the_judges_pick_desirable_and_the_other_not(tmp_path):
    """simulate's rounds with --method kto, through the loop, on the fake engine."""
    from dataclasses import replace

    from tests.fakes import FakeEngine
    from tui_align.cli.simulate import LOOP, train
    from tui_align.heldout import Person
    from tui_align.loop import LiveLoop

    config = replace(LOOP, method="kto", candidates=2, update_every=2)
    replies = [" ".join(["word"] * n) for n in (3, 5)]
    with SessionStore.open(tmp_path, "kto", method="kto") as store:
        loop = LiveLoop(store, FakeEngine(replies), config)
        assert await loop.start()
        person = Person(shorter, "shorter")
        counts, _ = await train(config, 3, loop, person, ["Say hi.", "Name a fruit."], [])
        assert counts.pop("judging_s") > 0 and counts == {"judgments": 6, "picks": 3, "edits": 0}  # two marks a round
        marks = [(ex["completion"][0]["content"], ex["label"]) for _, ex in store.feedback("kto")]
        assert sorted(marks) == sorted([(replies[0], True), (replies[1], False)] * 3)  # the shorter one (the pick) +
        assert [u["method"] for u in loop.client.updates] == ["kto"] * 3 and store.pending_count("kto") == 0
        await loop.close()


def test_group_scores_rank_a_group_by_round_robin():
    from tui_align.judges import Reply, group_scores, longer

    replies = [Reply("a b", "stop", 2), Reply("a b c d", "stop", 4), Reply("a", "stop", 1)]
    assert group_scores(longer, "longer", "p", replies) == [3, 5, 1]
    assert group_scores(lambda p, a, b: 0, "left", "p", replies) == [3, 3, 3]  # a side bias cancels out
    assert group_scores(lambda p, a, b: None, "none", "p", replies[:2]) == [3, 3]


async def test_simulate_grpo_scores_every_candidate_and_trains_on_groups(tmp_path):
    """simulate's rounds through the LiveLoop (the fake engine in the engine's place): the judge's round
    robin scores all N candidates, each score a judgment, and every complete group trains."""
    from tests.fakes import FakeEngine
    from tui_align.cli.simulate import train
    from tui_align.heldout import Person
    from tui_align.judges import load_judge
    from tui_align.loop import LiveLoop, LoopConfig

    config = LoopConfig(method="grpo", candidates=3, update_every=3, seed=0)
    engine = FakeEngine(candidates=[{"text": t, "finish_reason": "stop", "tokens": len(t)} for t in ("a", "a b c", "a b")])
    with SessionStore.open(tmp_path, "g", method="grpo") as store:
        loop = LiveLoop(store, engine, config)
        await loop.start()
        counts, _ = await train(config, 2, loop, Person(load_judge("shorter"), "shorter"), ["Say hi.", "Name one."], [])
        assert counts["judgments"] == 6 and store.pending_count("grpo") == 0
    assert [u["method"] for u in engine.updates] == ["grpo", "grpo"]
    assert [len(u["examples"]) for u in engine.updates] == [1, 2]  # the window tops up with the trained group
    for group in engine.updates[-1]["examples"]:
        by_text = {c[0]["content"]: s for c, s in zip(group["completions"], group["scores"])}
        assert by_text == {"a": 5, "a b": 3, "a b c": 1}  # the shorter reply wins every game


async def test_a_paced_person_judges_on_while_an_update_runs(tmp_path):
    """--pace: the rounds go on while an update trains; the last one's update is live at the end."""
    import asyncio
    from dataclasses import replace

    from tests.fakes import FakeEngine
    from tui_align.cli.simulate import LOOP, train
    from tui_align.heldout import Person
    from tui_align.loop import LiveLoop

    config = replace(LOOP, candidates=2, update_every=1, window=1)
    engine = FakeEngine(["a b c", "a"])
    engine.update_gate = asyncio.Event()  # the first update trains until the gate opens
    with SessionStore.open(tmp_path, "paced") as store:
        loop = LiveLoop(store, engine, config)
        assert await loop.start()
        judging = asyncio.ensure_future(train(config, 3, loop, Person(shorter, "shorter"), ["Say hi."], [], pace=0.01))

        async def three_rounds():  # a patient person would wait for the first update, forever
            while len(engine.generated) < 3:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(three_rounds(), 10)
        assert [g["version"] for g in engine.generated] == [0, 0, 0] and loop.updating and not judging.done()
        engine.update_gate.set()
        counts, _ = await judging
    assert counts["judgments"] == 3 and engine.version == len(engine.updates) >= 2  # chained on what waited


async def test_the_arena_check_samples_the_voted_versions_unless_turned_off(tmp_path):
    from tui_align.heldout import Person, evaluate
    from tui_align.loop import LoopConfig

    class Client:
        version = 3

        def __init__(self):
            self.sampled = []

        async def generate(self, messages, n, seed, version, **sampling):
            self.sampled.append(version)
            yield {"type": "done", "candidates": [{"text": "x" * (5 - version), "finish_reason": "stop", "tokens": 1}] * n}

        async def score_reference(self, rows):
            return [{"ref_chosen_logps": -1.0} for _ in rows]

    class Store:
        folder = tmp_path

        def arena_votes(self):
            return [(1, 2, 0.0), (2, 3, 1.0), (1, 3, 0.0)]

    for check, sampled in ((True, {0, 1, 2, 3}), (False, {0, 3})):
        client, said = Client(), []
        result = await evaluate(LoopConfig(seed=0), client, Person(shorter, "shorter"), ["p"], Store(), said.append,
                                arena_check=check)
        assert set(client.sampled) == sampled and result["win_rate"] == 1.0
        assert ("arena_spearman" in result) == check and any(s.startswith("arena:") for s in said) == check
