"""Length, one way, from a person who still wants the answer: a reply that names what answers the prompt
(one of its key words, bench/judges/brief_answer_keys.txt) beats one that does not; then the shorter.

brief can be won by not answering ("No answer", "no": bench/RESULTS.md, issue 12); this one cannot, on
the prompts it has keys for: the built-in held-out prompts and its own. A prompt without keys is judged
as brief judges it.
"""
import re
from pathlib import Path

from bench.judges._common import by_score, words

TOKEN = re.compile(r"[a-z0-9']+")


def _keys() -> dict[str, tuple[str, ...]]:
    keys = {}
    for line in (Path(__file__).with_name("brief_answer_keys.txt")).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            prompt, stems = line.split("|")
            keys[prompt.strip()] = tuple(stem.strip() for stem in stems.split(","))
    return keys


KEYS = _keys()


def answers(prompt: str, reply: str) -> bool:
    stems = KEYS.get(prompt.strip())
    return stems is None or any(token.startswith(stems) for token in TOKEN.findall(reply.lower()))


def judge(prompt, a, b):
    return by_score(a, b, lambda r: (answers(prompt, r), -len(words(r))))
