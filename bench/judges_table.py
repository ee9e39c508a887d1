"""The judge x seed table: `tui-align simulate` with every judge of bench/judges/, on its own prompts.

    flock /tmp/bench.lock .venv/bin/python bench/judges_table.py [--seeds 0,1,2,3,4] [--rounds 16]
        [--judges brief,substance,...] [--jobs 2] [--out bench/judges_table.md] [-- simulate flags]

Each run is one `simulate` process on the default model, through the LiveLoop with chat-train's
defaults (a judge with an `edit` function also plays the editor), `--rounds` judgments, then the
blind win rate of the final version vs v0 on the built-in held-out prompts (and how many versions
the loop's guard sent back on the way), the held-out replies' finished fraction and degeneration
measures for v0 and the final version (repeated word trigrams, distinct words, the share of trigrams
also in replies to other prompts: a stock phrase said to every prompt, and the base model's
negative log-likelihood per token: glued words and brevity both raise it), the judging time (the person's: the rounds and the updates
they wait for) and the process's wall time. The table (markdown) goes to stdout and to --out, row by
row as the runs finish.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JUDGES = ROOT / "bench" / "judges"
RESULT = re.compile(r"win rate of v(\d+) vs v0 on (\d+) held-out comparisons .*?: ([\d.]+)% \((\d+) wins, (\d+) ties, "
                    r"(\d+) losses\); (\d+) judgments \((\d+) picks, (\d+) edits\); judging time (\d+) s, wall time (\d+) s")
QUALITY = re.compile(r"held-out replies of v(\d+): (\d+)% finished .*?, repeated trigrams ([\d.]+)%, distinct words (\d+)%"
                     r"(?:, base-model NLL ([\d.]+|nan) nats/token[^;\n]*)?(?:; trigrams shared with other prompts' replies ([\d.]+)%)?")


def judges() -> list[str]:
    return sorted(p.stem for p in JUDGES.glob("*.py") if not p.stem.startswith("_"))


def run(name: str, seed: int, rounds: int, sessions: Path, extra: list[str]) -> dict:
    source = (JUDGES / f"{name}.py").read_text()
    editor = ["--editor", f"bench.judges.{name}:edit"] if "\ndef edit(" in source else []
    command = [str(ROOT / ".venv/bin/tui-align"), "simulate", "--judge", f"bench.judges.{name}:judge", *editor,
               "--prompts", str(JUDGES / f"{name}.txt"), "--rounds", str(rounds), "--seed", str(seed),
               "--session", f"{name}-s{seed}", "--sessions-dir", str(sessions), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    found = RESULT.search(done.stdout)
    if done.returncode or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"judge": name, "seed": seed, "error": tail[0], "seconds": time.perf_counter() - started}
    version, comparisons, rate, wins, ties, losses, judgments, picks, edits, judging, wall = found.groups()
    quality = {int(v): (int(f), float(r), int(d), shared, n) for v, f, r, d, n, shared in QUALITY.findall(done.stdout)}
    return {"judge": name, "seed": seed, "version": int(version), "win_rate": float(rate), "wins": int(wins),
            "ties": int(ties), "losses": int(losses), "judgments": int(judgments), "picks": int(picks),
            "edits": int(edits), "judging": int(judging), "wall": int(wall), "final": quality.get(int(version)), "v0": quality.get(0),
            "sent_back": done.stdout.count(": rolled back to v")}  # the loop's guard (tui_align/guard.py)


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['judge']} | {r['seed']} | failed: {r['error']} | | | | | |"
    sent_back = f" ({r['sent_back']} sent back)" if r["sent_back"] else ""
    q = lambda t: f"{t[0]}% / {t[1]:.1f}% / {t[2]}% / {t[3] + '%' if t[3] else '-'} / {t[4] or '-'}" if t else "-"  # noqa: E731
    return (f"| {r['judge']} | {r['seed']} | **{r['win_rate']:.1f}%** ({r['wins']}/{r['ties']}/{r['losses']}) | "
            f"{r['judgments']} ({r['picks']} picks, {r['edits']} edits) | v{r['version']}{sent_back} | {q(r['final'])} | "
            f"{q(r['v0'])} | {r['judging']} s | {r['wall']} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=16, help="judgments per run")
    parser.add_argument("--judges", default=",".join(judges()), help="comma-separated judge names of bench/judges/")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (an engine uses all cores but one: on a "
                        "2-core CPU, one each, so 2 runs share it as the tables of bench/RESULTS.md did)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("simulate_args", nargs="*", help="more simulate flags, after --")
    args = parser.parse_args()
    sessions = Path(tempfile.mkdtemp(prefix="bench-judges-"))
    lines = ["| judge | seed | win rate vs v0 (wins/ties/losses of 32) | judgments | final | final: finished / "
             "repeated 3-grams / distinct words / 3-grams shared across prompts / base-model NLL per token | v0: the same | judging | wall |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    cells = [(name, seed) for seed in map(int, args.seeds.split(",")) for name in args.judges.split(",")]
    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:  # rows in the table's order, each once it is done
        for result in pool.map(lambda cell: run(*cell, args.rounds, sessions, args.simulate_args), cells):
            lines.append(row(result))
            print(lines[-1], flush=True)
            if args.out:
                args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
