"""The held-out measurement `simulate` ends with (measurement, not policy): a version's replies to prompts the
loop never trained on, the judge's blind verdicts on them against v0's, and how they read: a win is only a win
when the replies stay finished and non-degenerate (tui_align/degeneration.py)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from tui_align import degeneration
from tui_align.loop import LoopConfig

EVAL_SAMPLES = 2  # replies per held-out prompt and version
ARENA_CHECKED = 8  # voted versions whose held-out win rate is measured against the leaderboard
REPLIES_FILE = "heldout.jsonl"  # in the session's folder: every measured version's held-out replies


@dataclass
class Person:
    """Who sits in the person's chair: a judge, and perhaps an editor."""

    judge: Callable
    judge_spec: str
    editor: Callable | None = None
    editor_spec: str = ""


def messages(cfg: LoopConfig, prompt: str) -> list[dict]:
    return ([{"role": "system", "content": cfg.system}] if cfg.system else []) + [{"role": "user", "content": prompt}]


async def held_out(cfg: LoopConfig, client, prompts: list[str], version: int) -> list[list]:
    """EVAL_SAMPLES replies of `version` to each held-out prompt, with fixed seeds (the live version stays)."""
    from tui_align.judges import Reply

    out = []
    for i, prompt in enumerate(prompts):
        async for event in client.generate(messages(cfg, prompt), n=EVAL_SAMPLES, seed=10_000_000 + i, version=version,
                                           **cfg.sampling):
            if event["type"] == "done":
                out.append([Reply(c["text"], c.get("finish_reason"), c.get("tokens")) for c in event["candidates"]])
    return out


async def base_nll(cfg: LoopConfig, client, prompts: list[str], replies: list[list]) -> tuple[float, int]:
    """A version's held-out replies as the base model (adapter off) reads them: the mean negative log-likelihood
    per token, in nats, and how many replies it read (an empty one has no tokens to read). Glued or garbled words,
    which a judge can be won with and the word measures miss, are improbable there; so are the first words of
    any reply, which makes a terse one cost more per token (bench/base_nll_scale.py). A reply's end-of-turn
    token counts too (improbable after a cut-off reply)."""
    kept = [(prompt, r) for prompt, rs in zip(prompts, replies) for r in rs if r]
    if not kept:
        return float("nan"), 0
    # score_reference takes pairs: each reply is paired with itself (a packed row runs a repeated reply once)
    scored = await client.score_reference([{"prompt": messages(cfg, p), "chosen": r, "rejected": r} for p, r in kept])
    tokens = sum((r.tokens or len(r.split())) + 1 for _, r in kept)
    return -sum(row["ref_chosen_logps"] for row in scored) / tokens, len(kept)


def compare(cfg: LoopConfig, person: Person, prompts: list[str], new: list[list], old: list[list]) -> dict:
    """The judge's blind verdicts, new vs old replies to the same prompts and seeds, in random order."""
    from tui_align.judges import checked_pick

    rng = random.Random(cfg.seed + 1)
    wins = ties = losses = 0
    for prompt, new_replies, old_replies in zip(prompts, new, old):
        for a, b in zip(new_replies, old_replies):
            new_left = rng.random() < 0.5
            pick = checked_pick(person.judge, person.judge_spec, prompt, *((a, b) if new_left else (b, a)))
            if pick is None:
                ties += 1
            elif (pick == 0) == new_left:
                wins += 1
            else:
                losses += 1
    total = wins + ties + losses
    return {"comparisons": total, "wins": wins, "ties": ties, "losses": losses,
            "win_rate": (wins + ties / 2) / max(total, 1)}


async def evaluate(cfg: LoopConfig, client, person: Person, prompts: list[str], store=None,
                   say: Callable[[str], None] = print, arena_check: bool = True) -> dict:
    """The final version vs version 0 on held-out prompts, and how both versions' replies read; with arena votes
    and `arena_check`, also how well the arena's leaderboard ranks the voted versions by their own held-out win
    rate vs v0 (Spearman)."""
    from tui_align.arena import leaderboard, spearman

    final = client.version
    samples = {0: await held_out(cfg, client, prompts, 0), final: await held_out(cfg, client, prompts, final)}
    base = samples[0]
    result = {"version": final, **compare(cfg, person, prompts, samples[final], base)}
    quality = {}
    for v in (final, 0):
        replies = samples[v]
        q = quality[v] = degeneration.summary([r for rs in replies for r in rs])
        q["shared_3grams"] = degeneration.shared_ngrams(replies)
        q["base_nll"], read = await base_nll(cfg, client, prompts, replies)
        say(f"held-out replies of v{v}: {q['finished']:.0%} finished within {cfg.max_new_tokens} tokens, "
            f"repeated trigrams {q['repeated_3grams']:.1%}, distinct words {q['distinct_words']:.0%}, "
            f"base-model NLL {q['base_nll']:.2f} nats/token over {read} of {len(prompts) * EVAL_SAMPLES} "
            f"(the empty ones have no tokens); trigrams shared with other prompts' replies {q['shared_3grams']:.1%}")
    result["quality"] = {f"v{v}": q for v, q in quality.items()}
    board = [r for r in leaderboard(store.arena_votes()) if r.version] if store is not None and arena_check else []
    if len(board) >= 2:
        checked = sorted(board, key=lambda r: -r.votes)[:ARENA_CHECKED]
        rates = []
        for r in checked:
            if r.version not in samples:
                samples[r.version] = await held_out(cfg, client, prompts, r.version)
            rates.append(compare(cfg, person, prompts, samples[r.version], base)["win_rate"])
        rho = spearman([r.rating for r in checked], rates)
        result["arena_spearman"] = rho
        say(f"arena: {len(store.arena_votes())} votes; leaderboard vs held-out win rate over "
            + ", ".join(f"v{r.version} {r.rating:.0f}/{rate:.0%}" for r, rate in zip(checked, rates))
            + f": Spearman {rho:.2f}")
    if store is not None:
        path = store.folder / REPLIES_FILE
        write_replies(path, prompts, samples)
        say(f"held-out replies, to read: {path}")
    return result


def write_replies(path, prompts: list[str], samples: dict[int, list[list]]) -> None:
    """Every measured version's held-out replies, one JSON line each (version, prompt, sample, text,
    finish_reason, tokens): a win rate is read beside what won it. Written whole, then renamed."""
    lines = [json.dumps({"version": v, "prompt": prompt, "sample": k, "text": str(reply),
                         "finish_reason": reply.finish_reason, "tokens": reply.tokens})
             for v, replies in sorted(samples.items()) for prompt, rs in zip(prompts, replies)
             for k, reply in enumerate(rs)]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    partial.replace(path)
