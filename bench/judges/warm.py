"""Tone: warm and encouraging words; a reply with none of them against one with some loses."""
from bench.judges._common import by_score, words

WARM = {"great", "glad", "happy", "love", "wonderful", "enjoy", "fun", "good", "nice", "hope", "awesome",
        "welcome", "amazing", "delighted", "lovely", "friendly", "kind", "please", "thanks", "thank"}


def judge(prompt, a, b):
    return by_score(a, b, lambda r: sum(w in WARM for w in words(r)) + r.count("!"))
