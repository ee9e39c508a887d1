"""Topic: the reply that shares more of the prompt's content words; among equals, the shorter."""
from bench.judges._common import by_score, content_words, words


def judge(prompt, a, b):
    topic = content_words(prompt)
    return by_score(a, b, lambda r: (len(topic & content_words(r)), -len(words(r))))
