"""Voice, from a person who still wants the answer: never about itself ("I", "my", "as an AI"), then a reply
that names what answers the prompt (its key words, bench/judges/answer_keys.txt), then the shorter.

no_i can be won by not answering, as brief can (bench/RESULTS.md, issue 12). Its own prompts ask the assistant
about facts ("Do you know why we have seasons?"), which invites "I'd be happy to explain" and has an answer.
"""
from bench.judges._common import answers, by_score, words
from bench.judges.no_i import SELF


def judge(prompt, a, b):
    return by_score(a, b, lambda r: (-sum(w in SELF for w in words(r)), answers(prompt, r), -len(words(r))))
