"""`tui-align simulate`: the live loop with a judge in the person's chair.

The same LiveLoop `chat-train` runs, with the same defaults (tui_align/loop.py): each round
a prompt, the loop's candidates, the judge's blind pick stored through the loop exactly as
a person's key would store it, and the loop's own updates. The simulated person is patient:
before typing the next prompt it waits for a running update, as a person who reads for as
long as an update takes. At the end the judge compares the final version with version 0 on
held-out prompts, blind and in random order (measurement, not policy).

The judge sees each reply's finish reason: a pair of two cut-off fragments teaches nothing
but length (DESIGN.md, "The live loop").
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import typer

from tui_align.cli.common import fail, user_errors
from tui_align.cli.sessions import SESSIONS_DIR
from tui_align.loop import LoopConfig

LOOP = LoopConfig(seed=0)
EVAL_SAMPLES = 2  # replies per held-out prompt and version
ARENA_CHECKED = 8  # voted versions whose held-out win rate is measured against the leaderboard


def builtin_prompts(name: str) -> list[str]:
    return _lines(resources.files("tui_align.data").joinpath(name).read_text(encoding="utf-8"))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def simulate(
    judge: str = typer.Option(..., "--judge", help="shorter, longer, package.module:function or path/file.py:function; "
                                                   "called as judge(prompt, a, b) -> 0, 1 or None."),
    rounds: int = typer.Option(40, "--rounds", help="Rounds to run (one prompt, the loop's candidates, one judgment each)."),
    session: str = typer.Option(None, "--session", help="Session to store the picks in (default: simulate-<time>); "
                                                        "an existing one resumes at its active version."),
    model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: bundled SmolLM2-135M-Instruct)."),
    update_every: int = typer.Option(LOOP.update_every, "--update-every", help="Run an update after this many new training rows."),
    window: int = typer.Option(LOOP.window, "--window", help="Rows per update: the newest untrained ones, topped up with the most recently trained."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps per update (default: the engine's live default). "
                                                   "Stored as the session's training override, as are --lr, --beta and --rpo-alpha."),
    lr: float = typer.Option(None, "--lr", help="Learning rate of the live updates (default: the engine's live default)."),
    beta: float = typer.Option(None, "--beta", help="DPO temperature of the live updates (default: the engine's)."),
    rpo_alpha: float = typer.Option(None, "--rpo-alpha", help="Weight of the chosen reply's NLL added to DPO (RPO; default: the engine's)."),
    max_new_tokens: int = typer.Option(LOOP.max_new_tokens, "--max-new-tokens", help="Longest reply, in tokens."),
    temperature: float = typer.Option(LOOP.temperature, "--temperature", help="Sampling temperature of the candidates."),
    system: str = typer.Option(LOOP.system, "--system", help="System prompt of every conversation ('' for none)."),
    prompts: Path = typer.Option(None, "--prompts", help="Text file, one training prompt a line (default: the built-in list)."),
    eval_prompts: int = typer.Option(16, "--eval-prompts", help="Held-out prompts for the final comparison (0 skips it)."),
    arena_every: int = typer.Option(LOOP.arena_every, "--arena-every", help="Every K-th round is a blind arena round "
                                    "(the live version against an earlier one), as in chat-train; 0: none."),
    seed: int = typer.Option(LOOP.seed, "--seed", help="Seed of the prompt order, the shown order and the sampling."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (the engine's device)."),
    sessions_dir: Path = SESSIONS_DIR,
) -> None:
    """Run the live loop with a simulated annotator and report its win rate against version 0."""
    with user_errors():
        from engine.protocol import UserError
        from tui_align.judges import load_judge
        from tui_align.store import SessionStore, sessions_dir as resolve

        for name, value in (("--rounds", rounds), ("--update-every", update_every), ("--window", window),
                            ("--steps", steps or 1), ("--max-new-tokens", max_new_tokens)):
            if value < 1:
                fail(f"{name} must be at least 1")
        if arena_every < 0:
            fail("--arena-every must be 0 (off) or more")
        judge_fn = load_judge(judge)
        if prompts is not None:
            if not prompts.is_file():
                raise UserError(f"--prompts {prompts}: no such file")
            train_prompts = _lines(prompts.read_text(encoding="utf-8", errors="replace"))
            if not train_prompts:
                raise UserError(f"--prompts {prompts}: no prompts in it")
        else:
            train_prompts = builtin_prompts("prompts.txt")
        heldout = [p for p in builtin_prompts("heldout.txt") if p not in set(train_prompts)][:max(eval_prompts, 0)]
        config = replace(LOOP, update_every=update_every, window=window, max_new_tokens=max_new_tokens,
                         temperature=temperature, system=system or None, seed=seed, arena_every=arena_every)
        overrides = {k: v for k, v in dict(steps=steps, lr=lr, beta=beta, rpo_alpha=rpo_alpha).items() if v is not None}
        name = session or time.strftime("simulate-%Y%m%d-%H%M%S")
        store = SessionStore.open(resolve(sessions_dir), name, model=model, method="dpo", hyperparameters=overrides,
                                  metadata={"simulate": {**asdict(config), "rounds": rounds}, "judge": judge})
        try:
            typer.echo(f"session {name} ({store.folder}); judge {judge}; {rounds} rounds, update every "
                       f"{update_every} rows on the newest {window}")
            asyncio.run(run(config, rounds, store, judge_fn, judge, train_prompts, heldout, model, device))
        finally:
            store.close()


async def run(config: LoopConfig, rounds: int, store, judge, judge_name: str, train_prompts: list[str],
              heldout: list[str], model: str | None, device: str) -> dict:
    from tui_align.client import EngineClient, EngineDied
    from tui_align.loop import LiveLoop

    started = time.perf_counter()
    client = EngineClient(model=model, method=config.method, session_dir=store.folder, device=device)
    loop = LiveLoop(store, client, config, on_notice=lambda text, severity: typer.echo(f"  {text.splitlines()[0]}"))
    try:
        if not await loop.start():
            fail("the engine did not start", code=1)
        info = client.info
        typer.echo(f"engine ready: {info.get('model')} on {info.get('device')}, version {client.version} "
                   f"({time.perf_counter() - started:.1f} s)")
        picks = await train(config, rounds, loop, judge, judge_name, train_prompts)
        if client.version == 0 or not heldout:
            typer.echo("no comparison: " + ("no update ran" if heldout else "--eval-prompts 0"))
            return {"version": client.version, "picks": picks}
        result = {**await evaluate(config, client, judge, judge_name, heldout, store), "picks": picks}
    except EngineDied as exc:
        store.log("error", f"simulate: {exc}")
        fail(f"the engine died: {exc}", code=1)
    finally:
        await loop.close()
    result["wall_s"] = time.perf_counter() - started
    line = (f"win rate of v{result['version']} vs v0 on {result['comparisons']} held-out comparisons "
            f"({judge_name} judge, blind): {result['win_rate']:.1%} ({result['wins']} wins, {result['ties']} ties, "
            f"{result['losses']} losses); {result['picks']} picks; wall time {result['wall_s']:.0f} s")
    store.log("info", f"simulate: {line}")
    typer.echo(line)
    return result


async def generate(client, messages: list[dict], config: LoopConfig, n: int, seed: int) -> list[dict]:
    async for event in client.generate(messages, n=n, seed=seed, **config.sampling):
        if event["type"] == "done":
            return event["candidates"]
    raise RuntimeError("generate ended without a done event")


async def train(config: LoopConfig, rounds: int, loop, judge, judge_name: str, prompts: list[str]) -> int:
    """The training rounds, through the loop; returns the number of picks (judgments that were not ties)."""
    from tui_align.judges import Reply, checked_pick

    order = prompts[:]
    random.Random(config.seed).shuffle(order)
    picks = 0
    for number in range(1, rounds + 1):
        await loop.wait_for_update()  # the patient person: the next prompt once the last update is live
        prompt = order[(number - 1) % len(order)]
        conversation = loop.store.new_conversation(system=config.system)
        round_ = await loop.generate(loop.begin(conversation, prompt))
        shown = [round_.results[i] for i in round_.shown_order]
        replies = [Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in shown]
        pick = checked_pick(judge, judge_name, prompt, replies[0], replies[1])
        if pick is None:
            loop.outcome(round_, "tie")
        else:
            loop.pick(round_, pick)
            picks += 1
        typer.echo(f"round {number:>3}/{rounds}  v{round_.version:<3} left {_describe(shown[0])} | right "
                   f"{_describe(shown[1])}  -> {('left', 'right')[pick] if pick is not None else 'no pick'}"
                   f"{'  (update started)' if loop.updating else ''}")
    await loop.wait_for_update()
    return picks


async def held_out(cfg: LoopConfig, client, prompts: list[str], version: int) -> list[list]:
    """EVAL_SAMPLES replies of `version` to each held-out prompt, with fixed seeds (the live version stays)."""
    from tui_align.judges import Reply

    out = []
    for i, prompt in enumerate(prompts):
        messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": prompt}]
        async for event in client.generate(messages, n=EVAL_SAMPLES, seed=10_000_000 + i, version=version, **cfg.sampling):
            if event["type"] == "done":
                out.append([Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in event["candidates"]])
    return out


def compare(cfg: LoopConfig, judge, judge_name: str, prompts: list[str], new: list[list], old: list[list]) -> dict:
    """The judge's blind verdicts, new vs old replies to the same prompts and seeds, in random order."""
    from tui_align.judges import checked_pick

    rng = random.Random(cfg.seed + 1)
    wins = ties = losses = 0
    for prompt, new_replies, old_replies in zip(prompts, new, old):
        for a, b in zip(new_replies, old_replies):
            new_left = rng.random() < 0.5
            pick = checked_pick(judge, judge_name, prompt, *((a, b) if new_left else (b, a)))
            if pick is None:
                ties += 1
            elif (pick == 0) == new_left:
                wins += 1
            else:
                losses += 1
    total = wins + ties + losses
    return {"comparisons": total, "wins": wins, "ties": ties, "losses": losses,
            "win_rate": (wins + ties / 2) / max(total, 1)}


async def evaluate(cfg: LoopConfig, client, judge, judge_name: str, prompts: list[str], store=None) -> dict:
    """The final version vs version 0 on held-out prompts; with arena votes, also how well the arena's
    leaderboard ranks the voted versions by their own held-out win rate vs v0 (Spearman)."""
    from tui_align.arena import leaderboard, spearman

    final = client.version
    base = await held_out(cfg, client, prompts, 0)
    samples = {final: await held_out(cfg, client, prompts, final)}
    result = {"version": final, **compare(cfg, judge, judge_name, prompts, samples[final], base)}
    finished = lambda replies: sum(r.finished for rs in replies for r in rs) / max(sum(map(len, replies)), 1)  # noqa: E731
    typer.echo(f"held-out replies that finished within {cfg.max_new_tokens} tokens: v{final} "
               f"{finished(samples[final]):.0%}, v0 {finished(base):.0%}")
    board = [r for r in leaderboard(store.arena_votes()) if r.version] if store is not None else []
    if len(board) >= 2:
        checked = sorted(board, key=lambda r: -r.votes)[:ARENA_CHECKED]
        rates = []
        for r in checked:
            if r.version not in samples:
                samples[r.version] = await held_out(cfg, client, prompts, r.version)
            rates.append(compare(cfg, judge, judge_name, prompts, samples[r.version], base)["win_rate"])
        rho = spearman([r.rating for r in checked], rates)
        result["arena_spearman"] = rho
        typer.echo(f"arena: {len(store.arena_votes())} votes; leaderboard vs held-out win rate over "
                   + ", ".join(f"v{r.version} {r.rating:.0f}/{rate:.0%}" for r, rate in zip(checked, rates))
                   + f": Spearman {rho:.2f}")
    return result


def _describe(candidate: dict) -> str:
    return f"{candidate.get('finish_reason') or '?':<6} {candidate.get('tokens') or 0:>3} tok"
