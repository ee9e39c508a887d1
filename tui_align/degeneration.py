"""Is a win a real one? Measures of degenerate text, to report beside a win rate (reward hacking).

Pure Python, on whitespace-split words: `repeated_ngrams` is the fraction of a reply's word
trigrams that already occurred earlier in it (loops like "never, never, never"); `distinct_words`
is the share of its words that are different (low for repetitive text). Both are 0 / 1 for a
reply too short to have any. `shared_ngrams` looks across prompts: a version that says the same
stock phrase to every prompt ("I'm happy to help with that! Just feel free to ask.", or "No
answer", or nothing at all) repeats nothing within a reply, and every reply's trigrams (or, under
three words, the reply itself, the empty one too) occur in the replies to other prompts.
"""

from __future__ import annotations


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def _grams(text: str, n: int) -> list[tuple[str, ...]]:
    return _ngrams(text.lower().split(), n)


def repeated_ngrams(text: str, n: int = 3) -> float:
    grams = _grams(text, n)
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


PUNCTUATION = ".,!?;:\"'()"


def _phrases(text: str, n: int) -> list[tuple[str, ...]]:
    """A reply's word n-grams, punctuation and case aside; a shorter reply is one phrase ("No answer", or ""
    for a reply with no words: an empty reply to every prompt is a stock reply too)."""
    words = [w for w in (w.strip(PUNCTUATION) for w in text.lower().split()) if w]
    return _ngrams(words, n) or [tuple(words)]


def shared_ngrams(replies_by_prompt: list[list[str]], n: int = 3) -> float:
    """The mean over replies of the fraction of a reply's word trigrams (a reply of fewer words: the reply) that
    also occur in a reply to another prompt; a prompt's other samples do not count."""
    prompts_of: dict[tuple[str, ...], set[int]] = {}
    for i, replies in enumerate(replies_by_prompt):
        for reply in replies:
            for phrase in _phrases(reply, n):
                prompts_of.setdefault(phrase, set()).add(i)
    shares = []
    for i, replies in enumerate(replies_by_prompt):
        for reply in replies:
            phrases = _phrases(reply, n)
            shares.append(sum(len(prompts_of[p] - {i}) > 0 for p in phrases) / len(phrases))
    return sum(shares) / len(shares) if shares else 0.0


def summary(replies: list) -> dict:
    """Finished fraction (replies carrying `finished`), mean repeated trigrams and distinct-word ratio."""
    if not replies:
        return {"finished": 0.0, "repeated_3grams": 0.0, "distinct_words": 0.0}
    return {"finished": sum(getattr(r, "finished", True) for r in replies) / len(replies),
            "repeated_3grams": sum(map(repeated_ngrams, replies)) / len(replies),
            "distinct_words": sum(map(distinct_words, replies)) / len(replies)}
