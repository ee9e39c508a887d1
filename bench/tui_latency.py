"""The TUI's own latencies on the default model: first frame after start-up, and the event loop's
longest stall while the engine generates and trains (DESIGN.md: < 1 s and < 50 ms); and what one
frame costs.

    flock /tmp/bench.lock .venv/bin/python bench/tui_latency.py [--runs 3]
    flock /tmp/bench.lock .venv/bin/python bench/tui_latency.py --frames-only [--rounds 6] [--profile OUT]

First frame: `tui-align chat-train` started in a detached tmux window, polled with capture-pane
every 20 ms until the status bar is drawn. Stalls: the app under Textual's Pilot, a 10 ms timer
recording its ticks through two rounds where a pick starts an update and the next round generates
while it trains (update_every=1).

Frames: Textual's `screen_update` (the timer that lays out and composites the screen) timed on
every call, its wall time and this thread's CPU time, with the app at 120x36 on the tests' fake
engine (tests/fakes.py) streaming one token per candidate every 40 ms (the default model's pace
on this CPU, DESIGN.md), through rounds of a prompt typed, candidates streamed, a pick, an update.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def first_frame(sessions: Path) -> float:
    """Seconds from `tui-align chat-train` to its status bar on screen; then the window is closed
    (SIGHUP: the TUI goes, and the engine exits when its stdin closes)."""
    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], capture_output=True, text=True).stdout

    command = f"TUI_ALIGN_SESSIONS={sessions} {Path('.venv/bin/tui-align').resolve()} chat-train"
    started = time.perf_counter()
    tmux("new-session", "-d", "-s", "bench-tui", "-x", "100", "-y", "30", command)
    try:
        while "feedback" not in tmux("capture-pane", "-p", "-t", "bench-tui"):
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        tmux("kill-session", "-t", "bench-tui")
        time.sleep(1)


async def longest_stall(sessions: Path) -> tuple[float, int]:
    from tui_align.app import ChatTrainApp, engine_client
    from tui_align.loop import LoopConfig
    from tui_align.rounds import Phase
    from tui_align.store import SessionStore

    async def until(pilot, condition):
        while not condition():
            await pilot.pause(0.02)

    store = SessionStore.open(sessions, "stall")
    app = ChatTrainApp(store, LoopConfig(max_new_tokens=48, update_every=1, seed=0), engine_client(store, None, "dpo"))
    ticks: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        chat = app.chat
        await until(pilot, lambda: chat.phase is Phase.PROMPT)
        app.set_interval(0.01, lambda: ticks.append(time.perf_counter()))
        for prompt, pick in (("Write a haiku about the sea.", "a"), ("Give me one tip for learning Python.", "b")):
            await pilot.press(*prompt, "enter")
            await until(pilot, lambda: chat.phase is Phase.JUDGING)
            await pilot.press(pick)
        await until(pilot, lambda: not app.loop.updating and app.client.version >= 2)
        await pilot.press("q")
    return max(b - a for a, b in zip(ticks, ticks[1:])), len(ticks)


STEP_SECONDS = 0.04  # between decoding steps: the default model on this 2-core CPU
WORDS = ("Sure. Here is a short poem about the sea, the tide and the wind that moves across the water at "
         "night, written in plain words that anyone can read.").split()


def frame_costs(sessions: Path, rounds: int, candidates: int, profile: Path | None) -> list[tuple[float, float, bool]]:
    """(wall s, CPU s, laid out) of every screen_update that draws while a person chats with the fake engine."""
    import cProfile

    from textual.screen import Screen

    from tests.fakes import FakeEngine
    from tui_align.app import ChatTrainApp
    from tui_align.loop import LoopConfig
    from tui_align.rounds import Phase
    from tui_align.store import SessionStore

    class PacedEngine(FakeEngine):
        """Tokens at the default model's pace, one per candidate per step; a reply cut off at max_new_tokens."""

        async def generate(self, messages, n=2, max_new_tokens=64, temperature=0.8, top_p=0.95, seed=None,
                           version=None):
            self._check("generate")
            words = [WORDS[(step + slot) % len(WORDS)] + " " for slot in range(n) for step in range(max_new_tokens)]
            for step in range(max_new_tokens):
                await asyncio.sleep(STEP_SECONDS)
                for slot in range(n):
                    yield {"type": "token", "candidate": slot, "text": words[slot * max_new_tokens + step]}
            texts = ["".join(words[slot * max_new_tokens:(slot + 1) * max_new_tokens]) for slot in range(n)]
            yield {"type": "done", "version": self.version,
                   "candidates": [{"text": t, "finish_reason": "length", "tokens": max_new_tokens} for t in texts]}

    frames: list[tuple[float, float, bool]] = []
    update = Screen._on_timer_update

    def timed(screen: Screen) -> None:
        laid_out = screen._layout_required
        draws = laid_out or screen._scroll_required or screen._repaint_required or bool(screen._dirty_widgets)
        wall, cpu = time.perf_counter(), time.thread_time()
        update(screen)
        if draws:  # a tick with nothing to draw only runs callbacks
            frames.append((time.perf_counter() - wall, time.thread_time() - cpu, laid_out))

    async def until(pilot, condition):
        while not condition():
            await pilot.pause(0.01)

    async def run() -> None:
        store = SessionStore.open(sessions, "frames")
        config = LoopConfig(candidates=candidates, update_every=candidates - 1, max_new_tokens=96, seed=0, arena_every=0)
        app = ChatTrainApp(store, config, PacedEngine())
        async with app.run_test(size=(120, 36)) as pilot:
            chat = app.chat
            await until(pilot, lambda: chat.phase is Phase.PROMPT)
            await pilot.pause(0.5)  # start-up's layouts are not a frame of the chat
            Screen._on_timer_update = timed
            profiler = cProfile.Profile() if profile else None
            if profiler:
                profiler.enable()
            try:
                for i in range(rounds):
                    await pilot.press(*f"Write a poem, number {i}", "enter")
                    await until(pilot, lambda: chat.phase is Phase.JUDGING)
                    await pilot.pause(0.3)  # reading time
                    await pilot.press("a")
                    await until(pilot, lambda: not app.loop.updating)
                    await pilot.pause(0.3)
            finally:
                Screen._on_timer_update = update
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(profile)
            await pilot.press("q")

    asyncio.run(run())
    return frames


def summary(values: list[float]) -> str:
    values = sorted(values)
    if not values:
        return "none"
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (f"median {statistics.median(values) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
            f"max {values[-1] * 1000:.1f} ms over {len(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="first-frame measurements")
    parser.add_argument("--frames-only", action="store_true", help="only the frame costs (no model, no engine)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of the frame-cost run")
    parser.add_argument("--candidates", type=int, default=2, help="candidates per round in the frame-cost run")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the frame-cost run's rounds here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    try:
        frames = frame_costs(root / "frames", args.rounds, args.candidates, args.profile)
        print(f"screen_update at 120x36, {args.candidates} candidates, {args.rounds} rounds:")
        print("  wall:", summary([wall for wall, _, _ in frames]))
        print("  CPU: ", summary([cpu for _, cpu, _ in frames]))
        print("  CPU of the frames that laid out the screen:", summary([cpu for _, cpu, laid in frames if laid]))
        if args.frames_only:
            return
        frames = [first_frame(root / f"frame{i}") for i in range(args.runs)]
        print("first frame (s):", " ".join(f"{f:.2f}" for f in frames), f"max {max(frames):.2f}")
        stall, ticks = asyncio.run(longest_stall(root / "stall"))
        print(f"longest event-loop gap while generating and training: {stall * 1000:.0f} ms over {ticks} ticks")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
