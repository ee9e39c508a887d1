"""`tui-align simulate`: the live loop with a judge in the person's chair.

Each round: a prompt, 2 candidates from the engine (through EngineClient, as the TUI does),
reference log-probs scored right away (the TUI does it while the person reads), the
judge's blind pick stored through SessionStore exactly as a person's pick is, and every K
picks a DPO+RPO update on the most recent pairs. At the end the judge compares the final
version with version 0 on held-out prompts, blind and in random order.

Defaults follow DESIGN.md "The live loop: what we measured": a pair of two cut-off
fragments teaches nothing but length, so replies are kept short (a system prompt asking
for brief answers, a modest max_new_tokens) and the judge sees each reply's finish reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import typer

from tui_align import DEFAULT_SYSTEM_PROMPT
from tui_align.cli.common import fail, user_errors
from tui_align.cli.sessions import SESSIONS_DIR



@dataclass
class SimulateConfig:
    rounds: int = 40
    update_every: int = 2
    window: int = 8
    steps: int = 1
    lr: float = 2e-4
    beta: float = 0.1
    rpo_alpha: float = 1.0
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    system: str = DEFAULT_SYSTEM_PROMPT
    eval_samples: int = 2
    seed: int = 0


def builtin_prompts(name: str) -> list[str]:
    return _lines(resources.files("tui_align.data").joinpath(name).read_text(encoding="utf-8"))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def simulate(
    judge: str = typer.Option(..., "--judge", help="shorter, longer, package.module:function or path/file.py:function; "
                                                   "called as judge(prompt, a, b) -> 0, 1 or None."),
    rounds: int = typer.Option(40, "--rounds", help="Rounds to run (one prompt, two candidates, one judgment each)."),
    session: str = typer.Option(None, "--session", help="Session to store the picks in (default: simulate-<time>); "
                                                        "an existing one resumes at its active version."),
    model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: bundled SmolLM2-135M-Instruct)."),
    update_every: int = typer.Option(2, "--update-every", help="Run an update after every K picks."),
    window: int = typer.Option(8, "--window", help="Each update trains on the most recent W pairs."),
    steps: int = typer.Option(1, "--steps", help="Optimizer steps per update."),
    lr: float = typer.Option(2e-4, "--lr", help="Learning rate of the live updates."),
    rpo_alpha: float = typer.Option(1.0, "--rpo-alpha", help="Weight of the chosen reply's NLL added to DPO (RPO)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Longest reply, in tokens."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature of the candidates."),
    system: str = typer.Option(DEFAULT_SYSTEM_PROMPT, "--system", help="System prompt of every conversation ('' for none)."),
    prompts: Path = typer.Option(None, "--prompts", help="Text file, one training prompt a line (default: the built-in list)."),
    eval_prompts: int = typer.Option(16, "--eval-prompts", help="Held-out prompts for the final comparison (0 skips it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt order, the shown order and the sampling."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (the engine's device)."),
    sessions_dir: Path = SESSIONS_DIR,
) -> None:
    """Run the live loop with a simulated annotator and report its win rate against version 0."""
    with user_errors():
        from engine.protocol import UserError
        from tui_align.judges import load_judge
        from tui_align.store import SessionStore, sessions_dir as resolve

        for name, value in (("--rounds", rounds), ("--update-every", update_every), ("--window", window),
                            ("--steps", steps), ("--max-new-tokens", max_new_tokens)):
            if value < 1:
                fail(f"{name} must be at least 1")
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
        cfg = SimulateConfig(rounds=rounds, update_every=update_every, window=window, steps=steps, lr=lr,
                             rpo_alpha=rpo_alpha, max_new_tokens=max_new_tokens, temperature=temperature,
                             system=system, seed=seed)
        name = session or time.strftime("simulate-%Y%m%d-%H%M%S")
        store = SessionStore.open(resolve(sessions_dir), name, model=model, method="dpo",
                                  hyperparameters={"simulate": asdict(cfg), "judge": judge})
        try:
            typer.echo(f"session {name} ({store.folder}); judge {judge}; {rounds} rounds, update every {update_every} picks")
            asyncio.run(run(cfg, store, judge_fn, judge, train_prompts, heldout, model, device))
        finally:
            store.close()


async def run(cfg: SimulateConfig, store, judge, judge_name: str, train_prompts: list[str], heldout: list[str],
              model: str | None, device: str) -> dict:
    from tui_align.client import EngineClient, EngineDied

    started = time.perf_counter()
    client = EngineClient(model=model, method="dpo", session_dir=store.folder, device=device,
                          version=store.active_version())
    try:
        info = await client.start()
        typer.echo(f"engine ready: {info.get('model')} on {info.get('device')}, version {client.version} "
                   f"({time.perf_counter() - started:.1f} s)")
        picks = await train(cfg, store, client, judge, judge_name, train_prompts)
        if client.version == 0 or not heldout:
            typer.echo("no comparison: " + ("no update ran" if heldout else "--eval-prompts 0"))
            return {"version": client.version, "picks": picks}
        result = {**await evaluate(cfg, client, judge, judge_name, heldout), "picks": picks}
    except EngineDied as exc:
        store.log("error", f"simulate: {exc}")
        fail(f"the engine died: {exc}", code=1)
    finally:
        await client.close()
    result["wall_s"] = time.perf_counter() - started
    line = (f"win rate of v{result['version']} vs v0 on {result['comparisons']} held-out comparisons "
            f"({judge_name} judge, blind): {result['win_rate']:.1%} ({result['wins']} wins, {result['ties']} ties, "
            f"{result['losses']} losses); {result['picks']} picks; wall time {result['wall_s']:.0f} s")
    store.log("info", f"simulate: {line}")
    typer.echo(line)
    return result


async def generate(client, messages: list[dict], cfg: SimulateConfig, n: int, seed: int) -> list[dict]:
    async for event in client.generate(messages, n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                       top_p=cfg.top_p, seed=seed):
        if event["type"] == "done":
            return event["candidates"]
    raise RuntimeError("generate ended without a done event")


async def train(cfg: SimulateConfig, store, client, judge, judge_name: str, prompts: list[str]) -> int:
    """The training rounds; returns the number of picks (judgments that were not ties)."""
    from tui_align.client import EngineError
    from tui_align.judges import Reply, checked_pick

    rng = random.Random(cfg.seed)
    order = prompts[:]
    rng.shuffle(order)
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}
    picks = 0
    for number in range(1, cfg.rounds + 1):
        prompt = order[(number - 1) % len(order)]
        conversation = store.new_conversation(system=cfg.system or None)
        turn = store.add_user_turn(conversation, prompt)
        messages = store.history(conversation)
        candidates = await generate(client, messages, cfg, n=2, seed=cfg.seed * 100_000 + number)
        shown = rng.sample([0, 1], 2)  # blind: which candidate is shown left is random
        ids = store.add_responses(turn, candidates, client.version, {**sampling, "seed": cfg.seed * 100_000 + number}, shown)
        if candidates[0]["text"] != candidates[1]["text"]:
            scored = await client.score_reference([{"prompt": messages, "chosen": [_assistant(candidates[0]["text"])],
                                                    "rejected": [_assistant(candidates[1]["text"])]}])
            store.record_ref_logps(ids, [scored[0]["ref_chosen_logps"], scored[0]["ref_rejected_logps"]])
        replies = [Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in candidates]
        pick = checked_pick(judge, judge_name, prompt, replies[shown[0]], replies[shown[1]])
        shown_ids = [ids[i] for i in shown]
        if pick is None:
            store.record_preference(turn, None, shown_ids, outcome="tie", shown_order=shown_ids)
        else:
            store.record_preference(turn, shown_ids[pick], [shown_ids[1 - pick]], shown_order=shown_ids)
            picks += 1
        left, right = (candidates[i] for i in shown)
        typer.echo(f"round {number:>3}/{cfg.rounds}  v{client.version:<3} left {_describe(left)} | right "
                   f"{_describe(right)}  -> {('left', 'right')[pick] if pick is not None else 'no pick'}")
        if pick is not None and picks % cfg.update_every == 0:
            examples, feedback_ids = store.recent_feedback("dpo", cfg.window)
            update_id = store.start_update("dpo", feedback_ids)
            hyperparameters = {"lr": cfg.lr, "beta": cfg.beta, "rpo_alpha": cfg.rpo_alpha, "steps": cfg.steps}
            try:
                done = await client.update("dpo", examples, hyperparameters)
            except EngineError as exc:
                store.finish_update(update_id, "failed", error=str(exc))
                store.log("error", f"update {update_id} failed: {exc}")
                typer.echo(f"  update failed: {exc}")
                continue
            metrics = done.get("metrics", {})
            store.finish_update(update_id, "done", version=done["version"], metrics=metrics)
            store.record_version(done["version"], store.versions_dir / f"v{done['version']:04d}", metrics)
            typer.echo(f"  update on {len(examples)} pairs -> v{done['version']}: loss {metrics.get('loss', float('nan')):.3f}"
                       f", accuracy {metrics.get('rewards/accuracy', float('nan')):.2f} ({done.get('seconds', 0):.1f} s)")
    return picks


async def evaluate(cfg: SimulateConfig, client, judge, judge_name: str, prompts: list[str]) -> dict:
    """The judge's blind verdicts, final version vs version 0, on the same prompts and seeds."""
    from tui_align.judges import Reply, checked_pick

    final = client.version
    samples = {}
    for version in (final, 0):
        if client.version != version:
            await client.rollback(version)
        samples[version] = []
        for i, prompt in enumerate(prompts):
            messages = ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": prompt}]
            candidates = await generate(client, messages, cfg, n=cfg.eval_samples, seed=10_000_000 + i)
            samples[version].append([Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in candidates])
    if client.version != final:
        await client.rollback(final)  # leave the engine where training left it
    rng = random.Random(cfg.seed + 1)
    wins = ties = losses = 0
    for prompt, new_replies, old_replies in zip(prompts, samples[final], samples[0]):
        for new, old in zip(new_replies, old_replies):
            new_left = rng.random() < 0.5
            pick = checked_pick(judge, judge_name, prompt, *((new, old) if new_left else (old, new)))
            if pick is None:
                ties += 1
            elif (pick == 0) == new_left:
                wins += 1
            else:
                losses += 1
    total = wins + ties + losses
    finished = lambda version: sum(r.finished for rs in samples[version] for r in rs) / max(total, 1)  # noqa: E731
    typer.echo(f"held-out replies that finished within {cfg.max_new_tokens} tokens: v{final} {finished(final):.0%}, "
               f"v0 {finished(0):.0%}")
    return {"version": final, "comparisons": total, "wins": wins, "ties": ties, "losses": losses,
            "win_rate": (wins + ties / 2) / max(total, 1)}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _describe(candidate: dict) -> str:
    return f"{candidate.get('finish_reason') or '?':<6} {candidate.get('tokens') or 0:>3} tok"
