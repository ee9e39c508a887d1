"""The TUI's own latencies on the default model: first frame after start-up, and the event loop's
longest stall while the engine generates and trains (DESIGN.md: < 1 s and < 50 ms).

    flock /tmp/bench.lock .venv/bin/python bench/tui_latency.py [--runs 3]

First frame: `tui-align chat-train` started in a detached tmux window, polled with capture-pane
every 20 ms until the status bar is drawn. Stalls: the app under Textual's Pilot, a 10 ms timer
recording its ticks through two rounds where a pick starts an update and the next round generates
while it trains (update_every=1).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="first-frame measurements")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    try:
        frames = [first_frame(root / f"frame{i}") for i in range(args.runs)]
        print("first frame (s):", " ".join(f"{f:.2f}" for f in frames), f"max {max(frames):.2f}")
        stall, ticks = asyncio.run(longest_stall(root / "stall"))
        print(f"longest event-loop gap while generating and training: {stall * 1000:.0f} ms over {ticks} ticks")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
