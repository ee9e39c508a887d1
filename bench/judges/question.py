"""A rare feature, shown by edits: the reply ends with a question to the reader.

The default model's replies rarely do; the person (the editor) adds one now and then, as `e`
does in the TUI: every third reply it sees that does not end with a question.
"""
from bench.judges._common import by_score

seen = {"n": 0}


def _asks(reply: str) -> bool:
    return reply.rstrip().endswith("?")


def judge(prompt, a, b):
    return by_score(a, b, lambda r: int(_asks(r)))


def edit(prompt, reply):
    if _asks(reply) or not getattr(reply, "finished", True):
        return None
    seen["n"] += 1
    if seen["n"] % 3 != 1:
        return None
    return reply.rstrip() + " What do you think?"
