"""Length, one way, from a person who still wants the answer: a reply that names what answers the prompt
(one of its key words, bench/judges/answer_keys.txt) beats one that does not; then the shorter.

brief can be won by not answering ("No answer", "no": bench/RESULTS.md, issue 12); this one cannot, on
the prompts it has keys for: the built-in held-out prompts and its own. A prompt without keys is judged
as brief judges it.
"""
from bench.judges._common import answers, by_score, words


def judge(prompt, a, b):
    return by_score(a, b, lambda r: (answers(prompt, r), -len(words(r))))
