"""Voice: never about itself ("I", "I'm", "my", "as an AI"); then the shorter."""
from bench.judges._common import by_score, words

SELF = {"i", "i'm", "im", "my", "me", "myself", "ai"}


def judge(prompt, a, b):
    return by_score(a, b, lambda r: (-sum(w in SELF for w in words(r)), -len(words(r))))
