"""Is a win a real one? Measures of degenerate text, to report beside a win rate (reward hacking).

Pure Python, on whitespace-split words: `repeated_ngrams` is the fraction of a reply's word
trigrams that already occurred earlier in it (loops like "never, never, never"); `distinct_words`
is the share of its words that are different (low for repetitive text). Both are 0 / 1 for a
reply too short to have any.
"""

from __future__ import annotations


def repeated_ngrams(text: str, n: int = 3) -> float:
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def distinct_words(text: str) -> float:
    words = text.lower().split()
    return len(set(words)) / len(words) if words else 1.0


def summary(replies: list) -> dict:
    """Finished fraction (replies carrying `finished`), mean repeated trigrams and distinct-word ratio."""
    if not replies:
        return {"finished": 0.0, "repeated_3grams": 0.0, "distinct_words": 0.0}
    return {"finished": sum(getattr(r, "finished", True) for r in replies) / len(replies),
            "repeated_3grams": sum(map(repeated_ngrams, replies)) / len(replies),
            "distinct_words": sum(map(distinct_words, replies)) / len(replies)}
