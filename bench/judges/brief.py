"""Length, one way: the shorter finished reply."""
from bench.judges._common import by_score, words


def judge(prompt, a, b):
    return by_score(a, b, lambda r: -len(words(r)))
