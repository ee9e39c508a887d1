"""Format: a short list, one item a line ("- " or "1. "); shown by edits, as a person would."""
import re

from bench.judges._common import by_score

ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.M)
seen = {"n": 0}


def judge(prompt, a, b):
    return by_score(a, b, lambda r: min(len(ITEM.findall(r)), 5))


def edit(prompt, reply):
    if ITEM.findall(reply) or not getattr(reply, "finished", True):
        return None
    seen["n"] += 1
    if seen["n"] % 3 != 1:
        return None
    parts = [p.strip(" .") for p in re.split(r"[.;,]\s+", reply.strip()) if p.strip(" .")]
    return "\n".join(f"- {p}." for p in parts[:4]) if len(parts) > 1 else None
