"""engine/generation.py: n candidates as one batch, streamed, seeded, cancellable."""

from __future__ import annotations

import pytest

import engine.generation as generation
from engine.generation import Generation, generate

MESSAGES = [{"role": "user", "content": "Tell me a story."}]


def stream(gen: Generation) -> dict[int, str]:
    parts: dict[int, str] = {}
    for deltas in gen:
        for candidate, text in deltas:
            assert text
            parts[candidate] = parts.get(candidate, "") + text
    return parts


def test_same_seed_same_replies_and_stream_adds_up(tiny_policy):
    model, tokenizer = tiny_policy
    first = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=12, seed=5)
    parts = stream(first)
    results = first.results()
    assert [r["finish_reason"] for r in results] == ["length", "length"]
    assert [r["tokens"] for r in results] == [12, 12]
    assert [parts.get(i, "") for i in range(2)] == [r["text"] for r in results]
    assert results[0]["text"] != results[1]["text"]  # two different samples, not one copied
    assert all(r["ttft_s"] is not None and r["tokens_per_s"] > 0 for r in results)
    again = generate(model, tokenizer, MESSAGES, n=2, max_new_tokens=12, seed=5)
    assert [r["text"] for r in again] == [r["text"] for r in results]
    other = generate(model, tokenizer, MESSAGES, n=2, max_new_tokens=12, seed=6)
    assert [r["text"] for r in other] != [r["text"] for r in results]


def test_n_candidates_are_one_batch(tiny_policy, monkeypatch):
    model, tokenizer = tiny_policy
    from engine.logprobs import causal_lm

    calls = []
    decoder = causal_lm(model).get_decoder()
    forward = decoder.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return forward(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", counting)
    generate(model, tokenizer, MESSAGES, n=3, max_new_tokens=6, seed=1)
    assert len(calls) == 6  # one forward per token, whatever n
    assert calls[0][0] == 1  # the prompt runs once; its cache is shared by the 3 rows
    assert all(shape == (3, 1) for shape in calls[1:])


def scripted(monkeypatch, steps: list[list[int]]):
    """Make `sample` return the given tokens: one list per step, one token per row still live."""
    steps = iter(steps)

    def fake_sample(logits, temperature, top_p, generator):
        import torch

        step = next(steps)
        assert len(step) == logits.shape[0]
        return torch.tensor(step)

    monkeypatch.setattr(generation, "sample", fake_sample)


def test_stop_token_ends_one_candidate_and_the_other_goes_on(tiny_policy, monkeypatch):
    model, tokenizer = tiny_policy
    hello = tokenizer.encode("Hello there friend", add_special_tokens=False)
    eos = tokenizer.eos_token_id
    # candidate 0 says the first word then stops; candidate 1 goes on alone (the batch shrinks)
    scripted(monkeypatch, [[hello[0], hello[0]], [eos, hello[1]], [hello[2]]])
    gen = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=3, seed=0)
    parts = stream(gen)
    first, second = gen.results()
    assert first["finish_reason"] == "stop" and first["tokens"] == 2
    assert first["text"] == tokenizer.decode(hello[:1]) == parts[0]
    assert second["finish_reason"] == "length" and second["text"] == "Hello there friend" == parts[1]


def test_multibyte_characters_stream_whole(tiny_policy, monkeypatch):
    model, tokenizer = tiny_policy
    text = "café 日本語 ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)  # these characters really are split over byte tokens
    scripted(monkeypatch, [[i] for i in ids])
    gen = Generation(model, tokenizer, MESSAGES, n=1, max_new_tokens=len(ids), seed=0)
    deltas = [t for step in gen for _, t in step]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text == gen.results()[0]["text"]


def test_cancel_stops_at_once(tiny_policy):
    model, tokenizer = tiny_policy
    gen = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=500, seed=3)
    for _ in range(4):
        next(gen)
    gen.cancel()
    assert gen.done
    with pytest.raises(StopIteration):
        next(gen)
    results = gen.results()
    assert [r["finish_reason"] for r in results] == ["cancelled", "cancelled"]
    assert [r["tokens"] for r in results] == [4, 4]


def test_logits_match_the_model(tiny_policy):
    import torch

    model, tokenizer = tiny_policy
    gen = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=3, seed=0)
    assert gen.head is not None  # the fast path is the one tested
    ids = torch.tensor([gen.prompt_ids])
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, -1]
        from transformers import DynamicCache

        gen.cache = DynamicCache()
        got = gen._logits(ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_greedy_and_top_p_sampling():
    import torch

    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert generation.sample(logits, 0.0, 1.0, g).tolist() == [1, 0]
    # with top_p tiny only the most likely token survives
    assert all(generation.sample(logits, 1.0, 0.01, g).tolist() == [1, 0] for _ in range(20))


def test_top_p_samples_the_renormalised_nucleus():
    import torch

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])  # top_p 0.9 keeps the first three
    logits = probs.log().expand(4000, -1)
    tokens = generation.sample(logits, 1.0, 0.9, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(tokens, minlength=4) / len(tokens)
    torch.testing.assert_close(frequencies, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.03, rtol=0)


@pytest.mark.parametrize("bad", [{"n": 0}, {"max_new_tokens": 0}, {"top_p": 0.0}, {"temperature": -1.0}])
def test_bad_options_refused(tiny_policy, bad):
    model, tokenizer = tiny_policy
    with pytest.raises(ValueError):
        Generation(model, tokenizer, MESSAGES, **bad)


def test_decoding_writes_the_cache_in_place_and_matches_a_full_forward(tiny_policy):
    """Every step's logits equal a forward over the whole sequence so far, a candidate leaving
    the batch included, and the steps write into one buffer per layer (no copy of the cache)."""
    import torch

    model, tokenizer = tiny_policy
    gen = Generation(model, tokenizer, MESSAGES, n=3, max_new_tokens=6, temperature=0, seed=0)
    next(gen)  # the prefill
    layer = gen.cache.layers[0]
    buffer = layer.key_buffer.data_ptr()
    rows = [list(gen.prompt_ids) + [c.tokens[0]] for c in gen.candidates]
    for step in range(4):
        if step == 2:  # candidate 1 leaves the batch
            gen.cache.batch_select_indices(torch.tensor([0, 2]))
            gen.live, gen.next_input, rows = [0, 2], gen.next_input[[0, 2]], [rows[0], rows[2]]
            buffer = layer.key_buffer.data_ptr()
        with torch.inference_mode():  # as Generation steps: the cache's tensors are inference tensors
            got = gen._forward()
            expected = model(input_ids=torch.tensor(rows)).logits[:, -1]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert layer.key_buffer.data_ptr() == buffer, "a step copied the cache"
        tokens = got.argmax(-1)
        gen.next_input = tokens[:, None]
        rows = [row + [t] for row, t in zip(rows, tokens.tolist())]


def test_a_long_stream_adds_up_to_the_reply(tiny_policy):
    model, tokenizer = tiny_policy
    gen = Generation(model, tokenizer, MESSAGES, n=2, max_new_tokens=60, temperature=1.0, top_p=1.0, seed=11)
    parts = stream(gen)
    results = gen.results()
    assert [parts.get(i, "") for i in range(2)] == [r["text"] for r in results]
    assert [r["text"] for r in results] == [tokenizer.decode(c.tokens, skip_special_tokens=True) for c in gen.candidates]
