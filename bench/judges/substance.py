"""Length, the other way: more distinct content, finished and not repeating itself."""
from bench.judges._common import by_score, content_words, words


def judge(prompt, a, b):
    def score(reply):
        w = words(reply)
        repeats = len(w) - len(set(w))
        return len(content_words(reply)) - repeats
    return by_score(a, b, score)
