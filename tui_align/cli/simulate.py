"""`tui-align simulate`: the live loop with a judge in the person's chair.

The same LiveLoop `chat-train` runs, with the same defaults (tui_align/loop.py): each round
a prompt, the loop's candidates, the judge's blind pick stored through the loop exactly as
a person's key would store it, and the loop's own updates. The simulated person is patient:
before typing the next prompt it waits for a running update, as a person who reads for as
long as an update takes (every run with one seed then trains the same versions). With
`--pace S` it is a person at work instead: S seconds to read and judge each round, never
waiting for an update, so the replies come from whichever version is live by then. At the end the judge compares the final version with version 0 on
held-out prompts, blind and in random order (measurement, not policy). The judging time is the
person's: from the first prompt until the last judgment's update is live, without the engine's
start or any held-out measurement.

The judge sees each reply's finish reason: a pair of two cut-off fragments teaches nothing
but length (DESIGN.md, "The live loop").

With `--method kto` the same pairwise judge gives KTO's per-reply verdicts: the reply it
picks is marked desirable (`+`), the other (with --candidates N, every one it beat)
undesirable (`-`), each mark stored through the loop as a person's key would store it (and
counted as a judgment); when it declines, the round is a tie and nothing trains KTO.

With `--method grpo` the judge scores every candidate 1-5 (tui_align.judges.group_scores: a
round robin within the group), each score stored through the loop as a person's key would
store it (and counted as a judgment); the round's scored candidates are one GRPO group.
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
from tui_align.heldout import Person, compare, evaluate, held_out
from tui_align.loop import LoopConfig
from tui_align.rounds import SLOT_LETTERS

LOOP = LoopConfig(seed=0)
METHODS = ("dpo", "kto", "grpo")  # the live methods a pairwise judge can drive


def builtin_prompts(name: str) -> list[str]:
    return _lines(resources.files("tui_align.data").joinpath(name).read_text(encoding="utf-8"))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def simulate(
    judge: str = typer.Option(..., "--judge", help="shorter, longer, package.module:function or path/file.py:function; "
                                                   "called as judge(prompt, a, b) -> 0, 1 or None."),
    method: str = typer.Option(LOOP.method, "--method", help="dpo (the judge's pick trains a pair), kto (the "
                               "picked reply is marked desirable, the other undesirable) or grpo (the judge's round robin "
                               "within the group scores each candidate 1-5; see tui_align.judges.group_scores)."),
    rounds: int = typer.Option(40, "--rounds", help="Rounds to run (one prompt, the loop's candidates, one judgment each)."),
    session: str = typer.Option(None, "--session", help="Session to store the picks in (default: simulate-<time>); "
                                                        "an existing one resumes at its active version."),
    model: str = typer.Option(None, "--model", help="Model folder, GGUF file or hub id (default: bundled SmolLM2-135M-Instruct)."),
    candidates: int = typer.Option(LOOP.candidates, "--candidates", help="Replies per round; dpo: the judge picks the best "
                                   "of them, as a person pressing one letter does (pairwise, by knock-out; kto too); grpo: the group, at least 2."),
    update_every: int = typer.Option(LOOP.update_every, "--update-every", help="Run an update after this many new training rows."),
    update_after: int = typer.Option(LOOP.update_after, "--update-after", min=0, help="Train on fewer new rows too once "
                                     "this many rounds have passed without an update (0: never)."),
    window: int = typer.Option(LOOP.window, "--window", help="Rows per update: the newest untrained ones, topped up with the most recently trained."),
    replay: int = typer.Option(LOOP.replay, "--replay", min=0, help="More rows per update, sampled at random from all older trained ones (0: none)."),
    replay_edits: int = typer.Option(LOOP.replay_edits, "--replay-edits", min=0, help="More rows per update: each of "
                                     "the N newest edits over the reply it corrects, already trained on (0: none)."),
    steps: int = typer.Option(None, "--steps", help="Optimizer steps per update (default: the engine's live default). "
                                                   "Stored as the session's training override, as are --lr, --beta and --rpo-alpha."),
    lr: float = typer.Option(None, "--lr", help="Learning rate of the live updates (default: the engine's live default)."),
    beta: float = typer.Option(None, "--beta", help="DPO temperature of the live updates; grpo: the weight of its KL to the reference (default: the engine's)."),
    rpo_alpha: float = typer.Option(None, "--rpo-alpha", help="Weight of the chosen reply's NLL added to DPO (RPO; default: the engine's)."),
    max_new_tokens: int = typer.Option(LOOP.max_new_tokens, "--max-new-tokens", help="Longest reply, in tokens."),
    temperature: float = typer.Option(LOOP.temperature, "--temperature", help="Sampling temperature of the candidates."),
    system: str = typer.Option(LOOP.system, "--system", help="System prompt of every conversation ('' for none)."),
    prompts: Path = typer.Option(None, "--prompts", help="Text file, one training prompt a line (default: the built-in list)."),
    eval_prompts: int = typer.Option(16, "--eval-prompts", help="Held-out prompts for the final comparison (0 skips it)."),
    arena_every: int = typer.Option(LOOP.arena_every, "--arena-every", help="Every K-th round is a blind arena round "
                                    "(the live version against an earlier one), as in chat-train; 0: none."),
    arena_check: bool = typer.Option(True, "--arena-check/--no-arena-check", help="At the end, also rank the arena's "
                                     "voted versions by their held-out win rate vs v0 (Spearman against the leaderboard); "
                                     "samples each of them, minutes of wall time after the judging."),
    editor: str = typer.Option(None, "--editor", help="package.module:function or path/file.py:function, called as "
                               "editor(prompt, reply) -> corrected reply or None: a person who corrects a reply now and "
                               "then, as `e` does in the TUI (tried on each shown reply, left first, before the judge)."),
    curve_every: int = typer.Option(0, "--curve-every", help="Measure the blind win rate vs v0 on the held-out prompts "
                                    "after every K judgments: a learning curve (0: only at the end)."),
    plot: Path = typer.Option(None, "--plot", help="Draw the learning curve, one line per seed, to this PNG "
                              "(needs matplotlib: pip install 'tui-align[plot]')."),
    seed: str = typer.Option(str(LOOP.seed), "--seed", help="Seed of the prompt order, the shown order and the sampling; "
                             "several, comma-separated (0,1,2), run one after the other, each in SESSION-sN."),
    pace: float = typer.Option(None, "--pace", help="Seconds the simulated person takes to read and judge a round, "
                               "never waiting for an update (default: patient, the next prompt once each update is live)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (the engine's device)."),
    sessions_dir: Path = SESSIONS_DIR,
) -> None:
    """Run the live loop with a simulated annotator and report its win rate against version 0."""
    with user_errors():
        from engine.protocol import UserError
        from tui_align.judges import load_function, load_judge
        from tui_align.store import SessionStore, sessions_dir as resolve

        if not 2 <= candidates <= 8:
            fail("--candidates must be 2 to 8")
        for name, value in (("--rounds", rounds), ("--update-every", update_every), ("--window", window),
                            ("--steps", steps or 1), ("--max-new-tokens", max_new_tokens)):
            if value < 1:
                fail(f"{name} must be at least 1")
        if method not in METHODS:
            fail(f"--method {method}: choose {' or '.join(METHODS)}")
        if method == "grpo" and rpo_alpha is not None:
            fail("--rpo-alpha is a DPO option: grpo has no chosen reply")
        if pace is not None and pace < 0:
            fail("--pace must be 0 seconds or more")
        if arena_every < 0 or curve_every < 0:
            fail(f"{'--arena-every' if arena_every < 0 else '--curve-every'} must be 0 (off) or more")
        try:
            seeds = [int(part) for part in seed.split(",")]
        except ValueError:
            fail(f"--seed {seed}: an integer, or several separated by commas")
        if plot is not None:
            plot_module()  # refused now, not after the runs
        person = Person(load_judge(judge), judge, load_function(editor, "--editor") if editor else None, editor or "")
        if prompts is not None:
            if not prompts.is_file():
                raise UserError(f"--prompts {prompts}: no such file")
            train_prompts = _lines(prompts.read_text(encoding="utf-8", errors="replace"))
            if not train_prompts:
                raise UserError(f"--prompts {prompts}: no prompts in it")
        else:
            train_prompts = builtin_prompts("prompts.txt")
        heldout = [p for p in builtin_prompts("heldout.txt") if p not in set(train_prompts)][:max(eval_prompts, 0)]
        base = session or time.strftime("simulate-%Y%m%d-%H%M%S")
        overrides = {k: v for k, v in dict(steps=steps, lr=lr, beta=beta, rpo_alpha=rpo_alpha).items() if v is not None}
        curves = {}
        for one in seeds:
            config = replace(LOOP, method=method, candidates=candidates, update_every=update_every,
                             update_after=update_after, window=window, replay=replay, replay_edits=replay_edits,
                             max_new_tokens=max_new_tokens, temperature=temperature, system=system or None, seed=one,
                             arena_every=arena_every)
            name = base if len(seeds) == 1 else f"{base}-s{one}"
            store = SessionStore.open(resolve(sessions_dir), name, model=model, method=method, hyperparameters=overrides,
                                      metadata={"simulate": {**asdict(config), "rounds": rounds}, "judge": judge,
                                                "editor": editor})
            try:
                typer.echo(f"session {name} ({store.folder}); judge {judge}; {rounds} rounds, update every "
                           f"{update_every} rows (or after {update_after} rounds) on the newest {window}; seed {one}")
                result = asyncio.run(run(config, rounds, store, person, train_prompts, heldout, model, device,
                                         curve_every, pace, arena_check))
                curves[one] = result.get("curve", [])
            finally:
                store.close()
        if plot is not None:
            draw(curves, plot, f"{judge}{' + ' + editor if editor else ''}")


def plot_module():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'tui-align[plot]' (or matplotlib)")
    return plt


def draw(curves: dict[int, list[tuple[int, float]]], path: Path, title: str) -> None:
    plt = plot_module()
    figure, axes = plt.subplots(figsize=(6, 4))
    for one, points in sorted(curves.items()):
        if points:
            axes.plot([j for j, _ in points], [100 * w for _, w in points], marker="o", label=f"seed {one}")
    axes.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    axes.set(xlabel="judgments", ylabel="blind win rate vs v0 (%)", ylim=(0, 100), title=title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    typer.echo(f"learning curve: {path}")


async def run(config: LoopConfig, rounds: int, store, person: Person, train_prompts: list[str],
              heldout: list[str], model: str | None, device: str, curve_every: int = 0,
              pace: float | None = None, arena_check: bool = True) -> dict:
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
        counted, curve = await train(config, rounds, loop, person, train_prompts, heldout, curve_every, pace)
        if client.version == 0 or not heldout:
            typer.echo("no comparison: " + ("no update ran" if heldout else "--eval-prompts 0")
                       + f"; {counted['judgments']} judgments, judging time {counted['judging_s']:.0f} s")
            return {"version": client.version, **counted, "curve": curve}
        result = {**await evaluate(config, client, person, heldout, store, typer.echo, arena_check), **counted}
        curve = [p for p in curve if p[0] < counted["judgments"]] + [(counted["judgments"], result["win_rate"])]
        result["curve"] = curve
        typer.echo("learning curve (judgments: win rate vs v0): "
                   + ", ".join(f"{j}: {w:.0%}" for j, w in curve))
    except EngineDied as exc:
        store.log("error", f"simulate: {exc}")
        fail(f"the engine died: {exc}", code=1)
    finally:
        await loop.close()
    result["wall_s"] = time.perf_counter() - started
    line = (f"win rate of v{result['version']} vs v0 on {result['comparisons']} held-out comparisons "
            f"({person.judge_spec} judge, blind): {result['win_rate']:.1%} ({result['wins']} wins, {result['ties']} ties, "
            f"{result['losses']} losses); {result['judgments']} judgments ({result['picks']} picks, {result['edits']} "
            f"edits); judging time {result['judging_s']:.0f} s, wall time {result['wall_s']:.0f} s")
    store.log("info", f"simulate: {line}")
    typer.echo(line)
    return result


async def generate(client, messages: list[dict], config: LoopConfig, n: int, seed: int) -> list[dict]:
    async for event in client.generate(messages, n=n, seed=seed, **config.sampling):
        if event["type"] == "done":
            return event["candidates"]
    raise RuntimeError("generate ended without a done event")


async def train(config: LoopConfig, rounds: int, loop, person: Person, prompts: list[str], heldout: list[str],
                curve_every: int = 0, pace: float | None = None) -> tuple[dict, list[tuple[int, float]]]:
    """The training rounds, through the loop. Returns the counts (judgments: every key a person would
    press to judge; picks; edits; judging_s, the seconds they took without the curve's measurements)
    and the learning curve [(judgments, win rate vs v0)]."""
    from tui_align.judges import Reply, best_of, checked_edit, group_scores

    order = prompts[:]
    random.Random(config.seed).shuffle(order)
    counts = {"judgments": 0, "picks": 0, "edits": 0}
    started, measured = time.perf_counter(), 0.0
    curve: list[tuple[int, float]] = []
    base = None  # v0's held-out replies, once a curve point needs them
    for number in range(1, rounds + 1):
        if pace is None:
            await loop.wait_for_update()  # the patient person: the next prompt once the last update is live
        prompt = order[(number - 1) % len(order)]
        conversation = loop.store.new_conversation(system=config.system)
        round_ = await loop.generate(loop.begin(conversation, prompt))
        if pace:
            await asyncio.sleep(pace)  # reading: the engine trains meanwhile
        shown = [round_.results[i] for i in round_.shown_order]
        replies = [Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in shown]
        if config.method == "grpo":  # every candidate scored, each score a key the person would press
            scores = group_scores(person.judge, person.judge_spec, prompt, replies)
            for slot, score in enumerate(scores):
                loop.rate(round_, slot, score)
            counts["judgments"] += len(scores)
            typer.echo(f"round {number:>3}/{rounds}  v{round_.version:<3} "
                       + " | ".join(f"{_describe(c)} -> {s}" for c, s in zip(shown, scores))
                       + f"{'  (update started)' if loop.updating else ''}")
        else:
            edit = None
            if person.editor is not None:
                edit = next(((slot, text) for slot, reply in enumerate(replies)
                             if (text := checked_edit(person.editor, person.editor_spec, prompt, reply))), None)
            pick = None if edit else best_of(person.judge, person.judge_spec, prompt, replies)
            if edit:
                loop.edit(round_, *edit)
                counts["edits"] += 1
            elif pick is None:
                loop.outcome(round_, "tie")
            elif config.method == "kto":  # the judge's best desirable, each one it beat undesirable
                for slot in range(round_.n):
                    loop.rate(round_, slot, int(slot == pick), "thumbs")
                counts["picks"] += 1
                counts["judgments"] += round_.n - 1  # one key per reply
            else:
                loop.pick(round_, pick)
                counts["picks"] += 1
            counts["judgments"] += 1
            letters = SLOT_LETTERS.upper()
            verdict = f"edit {letters[edit[0]]}" if edit else f"pick {letters[pick]}" if pick is not None else "no pick"
            typer.echo(f"round {number:>3}/{rounds}  v{round_.version:<3} "
                       + " | ".join(f"{letters[i]} {_describe(c)}" for i, c in enumerate(shown))
                       + f"  -> {verdict}{'  (arena)' if round_.versions else ''}"
                       f"{'  (update started)' if loop.updating else ''}")
        if curve_every and heldout and counts["judgments"] >= (len(curve) + 1) * curve_every and number < rounds:
            await loop.wait_for_idle()
            measuring = time.perf_counter()
            await loop.leave()  # what a person who stopped here would have, checked (no person waits for it)
            base = base or await held_out(config, loop.client, heldout, 0)
            live = await held_out(config, loop.client, heldout, loop.client.version)
            rate = compare(config, person, heldout, live, base)["win_rate"]
            curve.append((counts["judgments"], rate))
            typer.echo(f"  after {counts['judgments']} judgments: v{loop.client.version} wins {rate:.0%} vs v0 (held out)")
            measured += time.perf_counter() - measuring
    await loop.wait_for_idle()
    counts["judging_s"] = time.perf_counter() - started - measured
    await loop.leave()  # the last version is checked as it is when a person stops judging
    return counts, curve


def _describe(candidate: dict) -> str:
    return f"{candidate.get('finish_reason') or '?':<6} {candidate.get('tokens') or 0:>3} tok"
