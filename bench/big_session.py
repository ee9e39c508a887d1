"""Per-judgment work does not grow with the session: a 100,000-pair session, made with `sessions import`.

    flock /tmp/bench.lock .venv/bin/python bench/big_session.py [--rows 100000] [--rounds 200]

Measures, on one session that holds `--rows` imported pairs nobody trained on:
- `tui-align chat-train`'s first frame (started in a detached tmux window, polled every 20 ms
  until the status bar is drawn), as bench/tui_latency.py does;
- a pick committed and shown as stored: the time the chat screen takes to handle the key
  (the LiveLoop commits the pair, then the screen shows it), p50 and p99 over `--rounds`
  rounds under Textual's Pilot; the engine is the fake client of tests/fakes.py, which
  answers at once (an update takes 2 s), so the figure is the TUI process's own work;
- the examples of every live update the loop sent meanwhile (the backlog is worked through
  `window` rows at a time): their largest count, against the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tui_latency import first_frame  # noqa: E402


def make_session(root: Path, rows: int) -> float:
    data = root / "pairs.jsonl"
    with data.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"Question {i}: say something short."}],
                                "chosen": [{"role": "assistant", "content": f"Short answer {i}."}],
                                "rejected": [{"role": "assistant", "content": f"A much longer answer {i} that rambles."}]})
                    + "\n")
    started = time.perf_counter()
    subprocess.run([".venv/bin/tui-align", "sessions", "import", str(data), "--name", "default",
                    "--sessions-dir", str(root / "sessions")], check=True, capture_output=True)
    return time.perf_counter() - started


async def picks(root: Path, rounds: int) -> tuple[list[float], list[float], list[int], int]:
    from tests.fakes import FakeEngine
    from tui_align.app import ChatTrainApp
    from tui_align.loop import LoopConfig
    from tui_align.rounds import Phase
    from tui_align.screens.chat import ChatScreen
    from tui_align.store import SessionStore

    from tui_align.loop import LiveLoop

    handled: list[float] = []
    committed: list[float] = []
    original, original_pick = ChatScreen.feedback, LiveLoop.pick

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        original(self, *args, **kwargs)
        handled.append(time.perf_counter() - started)

    def timed_pick(self, *args, **kwargs):
        started = time.perf_counter()
        original_pick(self, *args, **kwargs)
        committed.append(time.perf_counter() - started)

    ChatScreen.feedback, LiveLoop.pick = timed, timed_pick
    store = SessionStore.open(root / "sessions", "default")
    engine = FakeEngine()
    engine.update_seconds = 2.0  # a live update on the default model takes seconds: the backlog runs beside
    config = LoopConfig(seed=0)
    app = ChatTrainApp(store, config, engine)
    async with app.run_test(size=(100, 30)) as pilot:
        chat = app.chat
        for _ in range(rounds):
            while chat.phase is not Phase.PROMPT:
                await pilot.pause(0.005)
            await pilot.press(*"Hi", "enter")
            while chat.phase is not Phase.JUDGING:
                await pilot.pause(0.005)
            await pilot.press("a")
        pending = app.loop.state.pending
        await pilot.press("escape", "q")
    ChatScreen.feedback, LiveLoop.pick = original, original_pick
    return handled, committed, [len(u["examples"]) for u in engine.updates], pending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="imported pairs in the session")
    parser.add_argument("--rounds", type=int, default=200, help="picks to time")
    parser.add_argument("--reuse", default=None, help="a folder this script made before: skip the import")
    parser.add_argument("--skip-frames", action="store_true", help="skip the first-frame measurement")
    args = parser.parse_args()
    root = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="bench-big-"))
    if not args.reuse:
        seconds = make_session(root, args.rows)
        print(f"sessions import of {args.rows} pairs: {seconds:.1f} s")
    if not args.skip_frames:
        frames = [first_frame(root / "sessions") for _ in range(3)]
        print("chat-train first frame on it (s):", " ".join(f"{f:.2f}" for f in frames), f"max {max(frames):.2f}")
    handled, committed, sizes, pending = asyncio.run(picks(root, args.rounds))
    for what, seconds in (("committed (LiveLoop.pick)", committed), ("committed and shown (the key's handler)", handled)):
        ms = sorted(h * 1000 for h in seconds)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        print(f"pick {what}, {len(ms)} picks: p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
              f"max {ms[-1]:.1f} ms")
    print(f"live updates meanwhile: {len(sizes)}, examples per update max {max(sizes, default=0)} "
          f"(window 8); still pending after them: {pending}")


if __name__ == "__main__":
    main()
