"""Soak: many rounds and live updates through the real engine process and the LiveLoop, looking for leaks.

    flock /tmp/bench.lock .venv/bin/python bench/soak.py [--rounds 1000] [--update-every 4]

The tiny random llama of tests/conftest.py (built here the same way), a fresh session, the
LiveLoop that chat-train runs (tui_align/loop.py) with a judge in the person's chair that
always picks the shorter reply, cut off or not (the random model never finishes one, so
tui_align.judges.shorter would decline every pair and nothing would train). Each round is a
new conversation (the tiny model's context is 512 tokens), two candidates of at most
`--max-new-tokens`; after every pick the soak waits for the update it started, so `rounds /
update_every` updates run, each on the loop's window, each saving a version folder.

Measured, every round: the engine's RSS (VmRSS) and open file descriptors, the client's
(this process's) descriptors, the time of a judgment's commit (LiveLoop.pick: the pair, its
examples and the pending count, committed before it returns); every `--every` rounds,
session.db's size after a WAL checkpoint and the rows it holds. Printed as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tui_align.client import EngineClient  # noqa: E402
from tui_align.loop import LiveLoop, LoopConfig  # noqa: E402
from tui_align.store import SessionStore  # noqa: E402

PROMPTS = ["What is the capital of France?", "Give me a tip for sleeping better.", "Why is the sky blue?",
           "Name three fruits.", "How do I boil an egg?", "What is a prime number?", "Say something kind.",
           "What is 12 times 12?"]
TABLES = ("conversations", "turns", "responses", "preferences", "examples", "updates", "versions", "events")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def descriptors(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def db_size(store: SessionStore) -> dict:
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = {t: store.db[t].count for t in TABLES}
    return {"bytes": (store.folder / "session.db").stat().st_size, "rows": sum(rows.values()), **rows}


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


async def soak(args, model: Path, sessions: Path) -> dict:
    store = SessionStore.open(sessions, "soak", model=str(model))
    config = LoopConfig(update_every=args.update_every, window=8, arena_every=0, max_new_tokens=args.max_new_tokens,
                        seed=0)
    client = EngineClient(model=str(model), session_dir=store.folder, device="cpu")
    notices: list[str] = []
    loop = LiveLoop(store, client, config, on_notice=lambda text, severity: notices.append(f"{severity}: {text}"))
    rounds, sizes, started = [], [], time.perf_counter()
    try:
        assert await loop.start(), notices
        for number in range(1, args.rounds + 1):
            round_ = await loop.generate(loop.begin(store.new_conversation(config.system), PROMPTS[number % len(PROMPTS)]))
            replies = [round_.text_at(slot) for slot in range(2)]
            pick = int(len(replies[1]) < len(replies[0]))
            committed = time.perf_counter()
            loop.pick(round_, pick)
            commit_ms = 1000 * (time.perf_counter() - committed)
            await loop.wait_for_update()
            rounds.append({"round": number, "engine_rss_mb": rss_mb(client.pid), "engine_fds": descriptors(client.pid),
                           "client_fds": descriptors("self"), "commit_ms": commit_ms, "version": client.version,
                           "chars": sum(map(len, replies))})
            if number % args.every == 0 or number == 1:
                sizes.append({"round": number, **db_size(store)})
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rounds[-1].items()}),
                      f"db {sizes[-1]['bytes']} B, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    finally:
        await loop.close()
        store.close()
    first, last = rounds[:100], rounds[-100:]
    commits = [r["commit_ms"] for r in rounds]
    grow = [(b["bytes"] - a["bytes"]) / max(1, b["rows"] - a["rows"]) for a, b in zip(sizes, sizes[1:])]
    versions_bytes = sum(f.stat().st_size for f in (sessions / "soak" / "versions").rglob("*") if f.is_file())
    return {
        "rounds": len(rounds), "updates": store_count(sessions, "updates", "status = 'done'"),
        "final_version": rounds[-1]["version"],
        "wall_s": round(time.perf_counter() - started, 1),
        "engine_rss_mb": {"first_100": summary([r["engine_rss_mb"] for r in first]),
                          "last_100": summary([r["engine_rss_mb"] for r in last])},
        "engine_fds": {"first_100": summary([r["engine_fds"] for r in first]),
                       "last_100": summary([r["engine_fds"] for r in last])},
        "client_fds": {"first_100": summary([r["client_fds"] for r in first]),
                       "last_100": summary([r["client_fds"] for r in last])},
        "commit_ms": {"p50": round(p(commits, 0.5), 2), "p99": round(p(commits, 0.99), 2), "max": round(max(commits), 2),
                      "p99_first_100": round(p(commits[:100], 0.99), 2), "p99_last_100": round(p(commits[-100:], 0.99), 2)},
        "db": {"sizes": sizes, "bytes_per_row_by_interval": [round(g, 1) for g in grow],
               "bytes_per_row_overall": round(sizes[-1]["bytes"] / sizes[-1]["rows"], 1)},
        "versions_folder_bytes": versions_bytes,
        "notices": notices[-5:],
    }


def store_count(sessions: Path, table: str, where: str) -> int:
    with SessionStore.open(sessions, "soak", readonly=True) as store:
        return store.db.execute(f"select count(*) from {table} where {where}").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="Rounds (one judgment each).")
    parser.add_argument("--update-every", type=int, default=4, help="Pairs per live update (1000 / 4 = 250 updates).")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="Longest candidate, in tokens.")
    parser.add_argument("--every", type=int, default=100, help="Rounds between db size measurements.")
    parser.add_argument("--out", type=Path, help="Also write the result (and every round) as JSON here.")
    args = parser.parse_args()
    from tests.conftest import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="tui-align-soak-") as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        result = asyncio.run(soak(args, model, Path(tmp) / "sessions"))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
