"""Bradley-Terry ratings of a session's versions from blind arena votes (pure Python: the TUI imports it).

A vote is (version a, version b, score of a): 1 a won, 0 b won, 0.5 a tie. Both-bad votes
count as ties: neither reply was preferred. The model: P(a beats b) = p_a / (p_a + p_b).
Strengths are the maximum a posteriori estimate under a weak prior, `prior` virtual ties of
every version against a pseudo-version of strength 1, so a version that never lost still
has a finite rating; fitted by the minorisation-maximisation iteration (Hunter 2004).
Ratings are on the Elo scale as Chatbot Arena reports them, anchored at v0 = 1000:
R = 1000 + 400 log10(p / p_v0). Intervals: percentile bootstrap over the votes.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

ANCHOR, SCALE = 1000.0, 400.0
PRIOR = 1.0  # virtual ties against the pseudo-version: weak, worth one vote
BOOTSTRAP = 200


@dataclass
class Rating:
    version: int
    rating: float
    low: float  # 95% bootstrap interval
    high: float
    votes: int
    win_rate_vs_v0: float | None  # from this version's direct votes against v0; None without any


def strengths(votes: list[tuple[int, int, float]], prior: float = PRIOR, iterations: int = 500,
              tolerance: float = 1e-10) -> dict[int, float]:
    """MAP Bradley-Terry strengths of every version in `votes` (and v0), normalised so v0 is 1."""
    wins: dict[int, float] = defaultdict(float)  # each version's (fractional) wins, virtual ties included
    games: dict[tuple[int, int], float] = defaultdict(float)
    players = {0}
    for a, b, score in votes:
        players.update((a, b))
        wins[a] += score
        wins[b] += 1 - score
        games[min(a, b), max(a, b)] += 1
    opponents: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for (a, b), n in games.items():
        opponents[a].append((b, n))
        opponents[b].append((a, n))
    p = dict.fromkeys(players, 1.0)
    for _ in range(iterations):
        new = {}
        for i in players:
            denominator = prior / (p[i] + 1.0) + sum(n / (p[i] + p[j]) for j, n in opponents[i])
            new[i] = (wins[i] + prior / 2) / denominator if denominator else 1.0
        change = max(abs(math.log(new[i] / p[i])) for i in players)
        p = new
        if change < tolerance:
            break
    return {i: p[i] / p[0] for i in players}


def elo(strength: float) -> float:
    return ANCHOR + SCALE * math.log10(strength)


def leaderboard(votes: list[tuple[int, int, float]], prior: float = PRIOR, samples: int = BOOTSTRAP,
                seed: int = 0) -> list[Rating]:
    """Every voted version (and v0), best first, with 95% bootstrap intervals."""
    if not votes:
        return []
    point = {v: elo(s) for v, s in strengths(votes, prior).items()}
    rng = random.Random(seed)
    draws: dict[int, list[float]] = defaultdict(list)
    for _ in range(samples):
        resample = [votes[rng.randrange(len(votes))] for _ in votes]
        fitted = strengths(resample, prior, iterations=200, tolerance=1e-6)
        for version in point:  # a version missing from a resample has only its prior: rating 1000-ish
            draws[version].append(elo(fitted.get(version, 1.0)))
    counts: dict[int, int] = defaultdict(int)
    direct: dict[int, list[float]] = defaultdict(list)
    for a, b, score in votes:
        counts[a] += 1
        counts[b] += 1
        if b == 0 and a != 0:
            direct[a].append(score)
        elif a == 0 and b != 0:
            direct[b].append(1 - score)
    out = []
    for version, rating in point.items():
        values = sorted(draws[version])
        low, high = _percentile(values, 0.025), _percentile(values, 0.975)
        rate = sum(direct[version]) / len(direct[version]) if direct[version] else None
        out.append(Rating(version, rating, min(low, rating), max(high, rating), counts[version], rate))
    return sorted(out, key=lambda r: -r.rating)


def _percentile(values: list[float], q: float) -> float:
    position = q * (len(values) - 1)
    lower = int(math.floor(position))
    upper = min(lower + 1, len(values) - 1)
    return values[lower] + (values[upper] - values[lower]) * (position - lower)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan for fewer than 2 points or no spread."""
    if len(xs) < 2:
        return float("nan")
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def opponent(live: int, versions: list[int], votes: list[tuple[int, int, float]]) -> int | None:
    """The earlier version a vote against `live` tells most about: the one whose rating is least
    known relative to it (fewest head-to-head votes), the nearest in number among equals."""
    earlier = [v for v in versions if v < live]
    if not earlier:
        return None
    head_to_head = defaultdict(int)
    for a, b, _ in votes:
        if live in (a, b):
            head_to_head[b if a == live else a] += 1
    return min(earlier, key=lambda v: (head_to_head[v], live - v))
