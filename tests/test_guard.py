"""The guard against reward hacking: its verdicts alone, and the loop rolling a cut-off or repeating version back."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeEngine
from tui_align.guard import EVIDENCE, ReplyGuard
from tui_align.loop import LiveLoop, LoopConfig
from tui_align.store import SessionStore

LOOP = "the cat sat on the mat " * 4  # every trigram after the first round of six repeats


def seen(guard: ReplyGuard, version: int, finished: int, cut: int, text: str = "A fine reply.", prompt: str = "p") -> None:
    for reason in ["stop"] * finished + ["length"] * cut:
        guard.observe(version, {"text": text, "finish_reason": reason}, prompt)


def test_a_version_is_judged_only_on_enough_candidates_of_both():
    guard = ReplyGuard()
    seen(guard, 0, EVIDENCE, 0)
    seen(guard, 1, 0, EVIDENCE - 1)
    assert guard.problem(1) is None  # seven cut-off replies are not yet evidence
    seen(guard, 1, 0, 1)
    assert guard.problem(1) == "0 of v1's 8 replies finished, against 100% of v0's"
    assert guard.problem(0) is None  # the baseline is never sent back


def test_a_fuller_version_that_still_mostly_finishes_stays():
    guard = ReplyGuard()
    seen(guard, 0, 6, 2)  # 75%
    seen(guard, 1, 4, 4)  # 50%: less, but not plainly
    assert guard.problem(1) is None
    seen(guard, 2, 3, 5)  # 37.5%: 37.5 points under the baseline
    assert "3 of v2's 8 replies finished" in guard.problem(2)


def test_a_noisy_baseline_does_not_send_back_a_version_that_mostly_finishes():
    guard = ReplyGuard()
    seen(guard, 0, 8, 0)  # two easy prompts: 100%
    seen(guard, 1, 5, 3)  # 62.5%: 37.5 points under, but most of its replies finish
    assert guard.problem(1) is None
    seen(guard, 2, 2, 2)
    seen(guard, 2, 0, 4)  # 25%, and 75 points under
    assert guard.problem(2) == "2 of v2's 8 replies finished, against 100% of v0's"


def test_repeating_replies_are_sent_back_and_cancelled_ones_count_for_nothing():
    guard = ReplyGuard()
    seen(guard, 0, EVIDENCE, 0)
    guard.observe(1, {"text": "", "finish_reason": "cancelled"}, "p")
    seen(guard, 1, EVIDENCE - 1, 0, text=LOOP)
    assert guard.seen[1].replies == EVIDENCE - 1 and guard.problem(1) is None
    seen(guard, 1, 1, 0, text=LOOP)
    assert guard.problem(1).startswith("v1's replies repeat 73% of their word trigrams, v0's 0%")


def test_one_stock_reply_to_every_prompt_is_sent_back_and_a_topic_template_is_not():
    guard = ReplyGuard()
    answers = {"Why do birds migrate?": "Birds fly south to find food when winter comes.",
               "What is a galaxy?": "A galaxy is a huge system of stars, gas and dust.",
               "How do fish breathe?": "Fish take oxygen from water through their gills."}
    for prompt, text in answers.items():
        seen(guard, 0, 3, 0, text=text, prompt=prompt)
    stock = "I'm happy to help with that! Just feel free to ask."
    seen(guard, 1, EVIDENCE // 2, 0, text=stock, prompt="What is a sonnet?")
    seen(guard, 1, EVIDENCE // 2 - 1, 0, text=stock, prompt="What is a sonnet?")
    assert guard.problem(1) is None  # one prompt: a reply that fits it may repeat across its samples
    seen(guard, 1, 1, 0, text=stock, prompt="How do I make pancakes?")
    assert guard.problem(1) == ("v1's replies to different prompts share 100% of their word trigrams (one stock reply), "
                                "v0's 0%")
    # the same frame around different answers shares a third of its trigrams: a habit, not one reply
    for prompt, answer in (("capital of Japan", "Tokyo"), ("capital of France", "Paris"), ("capital of Peru", "Lima")):
        seen(guard, 2, 3, 0, text=f"The {prompt} is {answer}, a big city.", prompt=prompt)
    assert guard.problem(2) is None


def test_saying_nothing_to_every_prompt_is_sent_back():
    # no_i_answer seed 4 (bench/RESULTS.md): a judge that wants no "I" picked "" over "That's an excellent
    # question!", and the next version ended every reply before its first word
    guard = ReplyGuard()
    seen(guard, 0, EVIDENCE // 2, 0, text="A comet is a small icy body in space.", prompt="What is a comet?")
    seen(guard, 0, EVIDENCE // 2, 0, text="DNA carries the genetic code of cells.", prompt="What is DNA?")
    answers = {"Why do we have seasons?": "The tilt of the Earth.", "What causes earthquakes?": "Moving plates."}
    for prompt, words in answers.items():
        seen(guard, 1, EVIDENCE // 2 - 1, 0, text="", prompt=prompt)
        seen(guard, 1, 1, 0, text=words, prompt=prompt)
    assert guard.problem(1) == ("v1's replies to different prompts share 75% of their word trigrams (one stock reply), "
                                "v0's 0%")


@pytest.fixture
def store(tmp_path):
    with SessionStore.open(tmp_path, "s") as s:
        yield s


async def test_the_loop_rolls_a_cut_off_version_back_and_trains_from_its_parent(store):
    engine, notices = FakeEngine(replies=["One.", "Two.", "Three.", "Four."]), []
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=6, update_after=0, window=12, seed=0),
                    on_notice=lambda text, severity: notices.append((text, severity)))
    await loop.start()
    conversation = store.new_conversation(None)

    async def judged(text: str) -> None:
        loop.pick(await loop.generate(loop.begin(conversation, text)), 0)
        await asyncio.sleep(0)
        await loop.wait_for_update()

    await judged("a")
    await judged("b")  # v0: 8 finished candidates, and its 6 rows made v1
    assert engine.version == 1
    engine.finish_reason = "length"  # v1 learnt to run on
    await judged("c")  # its round cancels the check of v1 (begun while "b" was judged) before any reply is done
    assert engine.version == 1 and loop.state.version == 1  # 4 candidates: not yet evidence
    round_ = await loop.generate(loop.begin(conversation, "d"))
    assert engine.version == 0 and loop.state.version == 0 and store.active_version() == 0  # back before the judgment
    assert ("0 of v1's 8 replies finished, against 100% of v0's: rolled back to v0; what you judge next trains "
            "from there", "warning") in notices
    engine.finish_reason = "stop"
    loop.pick(round_, 0)
    await asyncio.sleep(0)
    await loop.wait_for_update()
    assert engine.version == 2 and engine.parents[2] == 0  # the next update trained from the parent


async def test_a_rollback_that_fails_says_so_and_the_version_stays(store):
    from tui_align.client import EngineError

    engine, notices = FakeEngine(finish_reason="length"), []
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=100, update_after=0, seed=0),
                    on_notice=lambda text, severity: notices.append(text))
    await loop.start()
    seen(loop.guard, 0, EVIDENCE, 0)
    engine.parents[1], engine.version = 0, 1
    engine.fail_next["rollback"] = EngineError("internal", "disk gone")
    await loop.generate(loop.begin(store.new_conversation(None), "a"))
    await loop.generate(loop.begin(store.new_conversation(None), "b"))
    assert engine.version == 1 and notices[-1].endswith(": rollback failed: disk gone")


async def test_a_new_version_is_checked_on_the_latest_prompts_before_its_replies_are_shown(store):
    engine, notices = FakeEngine(replies=["One.", "Two.", "Three.", "Four."]), []
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=6, update_after=0, window=12, seed=0),
                    on_notice=lambda text, severity: notices.append(text))
    await loop.start()
    conversation = store.new_conversation(None)
    first = await loop.generate(loop.begin(conversation, "a"))
    loop.pick(first, 0)
    second = await loop.generate(loop.begin(conversation, "b"))
    engine.finish_reason = "length"  # what v1 will do
    loop.pick(second, 0)  # 6 rows: v1 trains, then is checked while the person reads
    await asyncio.sleep(0)
    await loop.wait_for_idle()
    checked = engine.generated[-2:]
    assert [c["messages"] for c in checked] == [second.prompt, first.prompt]  # the newest prompt first
    assert all(c["version"] == 1 and c["n"] == 4 for c in checked)
    assert engine.version == 0 and store.active_version() == 0 and loop.state.version == 0
    assert notices[-1] == ("0 of v1's 8 replies finished, against 100% of v0's: rolled back to v0; what you judge "
                           "next trains from there")


async def test_the_version_a_person_leaves_is_checked_on_another_prompt_when_their_last_round_cut_it_short(store):
    # no_i_answer seed 4 (bench/RESULTS.md): the last round showed 4 empty replies of the final version, too few
    # for a verdict, and the check that round had cancelled never ran again
    engine = FakeEngine(replies=["A reply of several words to read."])
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=100, update_after=0, seed=0))
    await loop.start()
    conversation = store.new_conversation(None)
    await loop.generate(loop.begin(conversation, "a"))
    second = await loop.generate(loop.begin(conversation, "b"))
    engine.parents[1], engine.version, engine.finish_reason = 0, 1, "length"
    last = await loop.generate(loop.begin(conversation, "c"))
    assert loop.guard.problem(1) is None  # 4 replies: no verdict yet
    await loop.leave()
    checked = engine.generated[-1]
    assert checked["messages"] == second.prompt != last.prompt and checked["version"] == 1  # not "c" again
    assert engine.version == 0 and store.active_version() == 0


async def test_the_persons_next_round_cancels_a_check_that_is_sampling(store):
    engine = FakeEngine(replies=["A reply of several words to read."])
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=4, update_after=0, seed=0))
    await loop.start()
    conversation = store.new_conversation(None)
    loop.pick(await loop.generate(loop.begin(conversation, "a")), 0)
    loop.pick(await loop.generate(loop.begin(conversation, "b")), 0)
    await loop.wait_for_update()
    await asyncio.sleep(0)  # the check has begun to sample v1
    assert engine.version == 1 and loop._check_task is not None and not loop._check_task.done()
    round_ = await loop.generate(loop.begin(conversation, "c"))
    assert loop._check_task.cancelled() and round_.version == 1
    assert loop.guard.seen[1].replies == 4  # the round's own candidates: the cancelled check counted none


async def test_a_round_waits_for_a_check_that_is_rolling_back(store):
    """Cancelled mid-rollback, the check would leave the client at a version the engine no longer has live."""
    engine, gate = FakeEngine(replies=["One.", "Two.", "Three.", "Four."]), asyncio.Event()
    roll_back = engine.rollback

    async def slow_rollback(version):
        await gate.wait()
        return await roll_back(version)

    engine.rollback = slow_rollback
    loop = LiveLoop(store, engine, LoopConfig(candidates=4, update_every=6, update_after=0, seed=0))
    await loop.start()
    conversation = store.new_conversation(None)
    loop.pick(await loop.generate(loop.begin(conversation, "a")), 0)
    second = await loop.generate(loop.begin(conversation, "b"))
    engine.finish_reason = "length"
    loop.pick(second, 0)
    while not loop._check_verdict:  # v1 trained, sampled and found cut off: its rollback is in flight
        await asyncio.sleep(0)
    waiting = asyncio.ensure_future(loop.generate(loop.begin(conversation, "c")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done() and engine.version == 1 and len(engine.generated) == 4  # 2 rounds, 2 checks
    gate.set()
    round_ = await waiting
    assert round_.version == 0 and engine.version == 0 and loop.client.version == 0
