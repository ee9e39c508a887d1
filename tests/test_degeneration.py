"""The degeneration measures simulate reports beside a win rate."""

import pytest

from tui_align.degeneration import distinct_words, repeated_ngrams, shared_ngrams, summary
from tui_align.judges import Reply


def test_repeats_within_a_reply():
    assert repeated_ngrams("never never never never") == 0.5  # 2 trigrams, the second a repeat of the first
    assert repeated_ngrams("Paris.") == 0.0 and distinct_words("a a b b") == 0.5 and distinct_words("") == 1.0


def test_a_stock_phrase_said_to_every_prompt_is_shared_and_answers_are_not():
    stock = "I'm happy to help with that! Just ask."
    assert shared_ngrams([[stock, stock], [stock], [stock + " Now."]]) == pytest.approx((3 + 6 / 7) / 4)  # all but "just ask. now."
    answers = [["The capital of Japan is Tokyo."], ["Birds migrate to find food in winter."], ["Water freezes at 0 C."]]
    assert shared_ngrams(answers) == 0.0
    # a prompt's own second sample does not count: "c d e" is the one trigram the two prompts' replies share
    assert shared_ngrams([["a b c d e", "a b c d e"], ["x c d e"]]) == pytest.approx((1 / 3 + 1 / 3 + 1 / 2) / 3)
    assert shared_ngrams([["Yes."], ["No."]]) == 0.0 and shared_ngrams([]) == 0.0
    # saying nothing to every prompt is one stock reply too (no_i_answer seed 4's final, bench/RESULTS.md)
    assert shared_ngrams([[""], ["!"], ["Tokyo."]]) == pytest.approx(2 / 3)
    # a reply under three words is one phrase, its case and punctuation aside
    assert shared_ngrams([["No answer"], ["no answer."], ["Tokyo."], ["Paris!"]]) == 0.5


def test_summary_counts_cut_off_replies():
    replies = [Reply("Tokyo is the capital.", "stop", 5), Reply("The capital of", "length", 3)]
    assert summary(replies)["finished"] == 0.5
