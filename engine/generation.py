"""Batched, streamed sampling: n candidates for one conversation as ONE batch.

The prompt is run once (batch 1), its KV cache repeated n times, then every step feeds
one token per live candidate. A candidate that ends (EOS or max_new_tokens) leaves the
batch, so the others stop paying for it. The cache has room for every new token from the
start (GrowingCache), and each candidate's text is decoded from its last few tokens only, so
a step's cost does not grow with the reply. `Generation` is a plain iterator: each `next()`
is one decoding step and returns the text each candidate added, so the caller (the
server's scheduler) can interleave other work and cancel between any two tokens.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from engine.chat import chat_ids, check_messages
from engine.lora_decode import direct, plain_layers
from engine.protocol import CANCELLED, CUT_OFF, FINISHED


TOP_K_FIRST = 512
DECODE_CONTEXT = 6  # tokens decoded before the new ones, so a token's text (a leading space, a merge) is right
PREFILL_CHUNK = 256  # prompt tokens per step: a long prompt is cancellable between chunks (no slower than whole)


@dataclass
class Candidate:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    settled: int = 0  # tokens whose text is in `text`
    finish_reason: str | None = None  # FINISHED | CUT_OFF | CANCELLED (engine.protocol)
    first_token_at: float | None = None
    finished_at: float | None = None


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row from [rows, vocab] logits; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    # The nucleus almost always lies within the top few hundred tokens: sort and sample only
    # those (a full sort, or a draw over the whole vocabulary, costs more), unless they do
    # not reach top_p.
    sorted_probs, order = probs.topk(min(TOP_K_FIRST, probs.shape[-1]), -1)
    if (sorted_probs.sum(-1) <= top_p).any():
        sorted_probs, order = probs.sort(-1, descending=True)
    outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # the most likely token always stays
    choice = torch.multinomial(sorted_probs.masked_fill(outside, 0.0), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def stop_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


class Generation:
    """Iterate to decode; each step yields [(candidate, new_text), ...]; then read `results()`."""

    def __init__(self, model, tokenizer, messages: list[dict] | None, n: int = 2, max_new_tokens: int = 128,
                 temperature: float = 0.8, top_p: float = 0.95, seed: int | None = None,
                 started: float | None = None, prompt_ids: list[int] | None = None):
        """`prompt_ids`: the prompt already as token ids (a tokenizer without a chat template), instead of `messages`."""
        if prompt_ids is None:
            check_messages(messages, "messages")
        if not 1 <= n <= 16:
            raise ValueError("n must be between 1 and 16")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not (temperature >= 0 and 0 < top_p <= 1):
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        self.model, self.tokenizer = model, tokenizer
        self.n, self.max_new_tokens, self.temperature, self.top_p = n, max_new_tokens, temperature, top_p
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.prompt_ids = list(prompt_ids) if prompt_ids is not None else chat_ids(tokenizer, messages,
                                                                                  add_generation_prompt=True)
        self.stops = stop_ids(model, tokenizer)
        self.candidates = [Candidate() for _ in range(n)]
        self.live = list(range(n))  # candidate index of each row still in the batch
        self.cache = None
        self.prefilled = 0  # prompt tokens in the cache
        self.next_input: torch.Tensor | None = None
        self.decoder, self.head = _decoder_and_head(model)
        self.lora_layers = plain_layers(model)
        from engine.logprobs import causal_lm

        self.cache_argument = _cache_argument(self.decoder if self.head is not None else causal_lm(model))
        self.started = started if started is not None else time.perf_counter()

    @property
    def done(self) -> bool:
        return not self.live

    def __iter__(self):
        return self

    def __next__(self) -> list[tuple[int, str]]:
        if self.done:
            raise StopIteration
        # Per step: inference mode and the direct LoRA forward must not leak into work (an
        # update) interleaved between steps. The cache's tensors are inference tensors, so every
        # step touches them inside it.
        with torch.inference_mode(), direct(self.lora_layers):
            logits = self._forward()
            if logits is None:  # a chunk of the prompt, no token yet
                return []
            tokens = sample(logits, self.temperature, self.top_p, self.generator).tolist()
            deltas, keep = self._settle(tokens)
            if len(keep) < len(self.live):
                if keep:
                    self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
                self.live = [self.live[row] for row in keep]
            self.next_input = torch.tensor([[tokens[row]] for row in keep], device=self.device)
        return deltas

    def _settle(self, tokens: list[int]) -> tuple[list[tuple[int, str]], list[int]]:
        """Append each live row's new token: (the text it adds per candidate, the rows that go on)."""
        now = time.perf_counter()
        deltas, keep = [], []
        for row, (index, token) in enumerate(zip(self.live, tokens)):
            cand = self.candidates[index]
            if cand.first_token_at is None:
                cand.first_token_at = now
            cand.tokens.append(token)
            if token in self.stops:
                deltas += self._finish(index, FINISHED, now)
                continue
            delta = self._new_text(cand)
            if delta is not None:  # None: an incomplete UTF-8 sequence waits for its next byte-token
                if delta:
                    deltas.append((index, delta))
                cand.text += delta
                cand.settled = len(cand.tokens)
            if len(cand.tokens) >= self.max_new_tokens:
                deltas += self._finish(index, CUT_OFF, now)
            else:
                keep.append(row)
        return deltas, keep

    def _new_text(self, cand: Candidate) -> str | None:
        """The text the unsettled tokens add, decoded with a few settled tokens before them
        (decoding the whole reply every step costs O(length) a step)."""
        start = max(0, cand.settled - DECODE_CONTEXT)
        before = self.tokenizer.decode(cand.tokens[start:cand.settled], skip_special_tokens=True)
        text = self.tokenizer.decode(cand.tokens[start:], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return None
        if text.startswith(before):
            return text[len(before):]
        whole = self.tokenizer.decode(cand.tokens, skip_special_tokens=True)  # the window decoded differently
        return whole[len(cand.text):] if whole.startswith(cand.text) else None

    def _forward(self) -> torch.Tensor | None:
        """Logits for the next token, or None after a chunk of the prompt that is not its last."""
        if self.prefilled < len(self.prompt_ids):  # prefill once, then share the prompt's cache between the n rows
            if not self.prefilled:
                self.cache = GrowingCache(self.max_new_tokens)
            end = min(self.prefilled + PREFILL_CHUNK, len(self.prompt_ids))
            logits = self._logits(torch.tensor([self.prompt_ids[self.prefilled:end]], device=self.device))
            self.prefilled = end
            if end < len(self.prompt_ids):
                return None
            self.cache.batch_repeat_interleave(self.n)
            return logits.expand(self.n, -1)
        return self._logits(self.next_input)

    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [rows, vocab]: the decoder, then the LM head on the last position only."""
        if self.head is None:  # an unusual model: let it do everything
            return self.model(input_ids=input_ids, **{self.cache_argument: self.cache}, use_cache=True,
                              logits_to_keep=1).logits[:, -1]
        hidden = self.decoder(input_ids=input_ids, **{self.cache_argument: self.cache},
                              use_cache=True).last_hidden_state[:, -1]
        # weight @ hidden.T rather than F.linear: for a few rows against the large vocabulary
        # matrix, CPU BLAS runs this orientation ~3x faster (it is the same product).
        logits = torch.mm(self.head.weight, hidden.t()).t()
        return logits if self.head.bias is None else logits + self.head.bias

    def _finish(self, index: int, reason: str, now: float) -> list[tuple[int, str]]:
        """Close a candidate; returns the text not streamed yet (a held-back partial character)."""
        cand = self.candidates[index]
        text = self.tokenizer.decode([t for t in cand.tokens if t not in self.stops], skip_special_tokens=True)
        rest = text[len(cand.text):] if text.startswith(cand.text) else ""
        cand.text, cand.finish_reason, cand.finished_at = text, reason, now
        return [(index, rest)] if rest else []

    def cancel(self) -> None:
        now = time.perf_counter()
        for index in self.live:
            self._finish(index, CANCELLED, now)
        self.live = []
        self.cache = None

    def results(self) -> list[dict]:
        out = []
        for cand in self.candidates:
            elapsed = (cand.finished_at or time.perf_counter()) - self.started
            out.append({
                "text": cand.text,
                "tokens": len(cand.tokens),
                "finish_reason": cand.finish_reason or CANCELLED,
                "ttft_s": round(cand.first_token_at - self.started, 4) if cand.first_token_at else None,
                "tokens_per_s": round(len(cand.tokens) / elapsed, 2) if elapsed > 0 and cand.tokens else 0.0,
            })
        return out


class GrowingLayer(DynamicLayer):
    """One layer's keys and values in buffers with room for `reserve` more positions: a step
    writes its position in place, where DynamicLayer concatenates (a copy of the whole cache,
    every layer, every step)."""

    def __init__(self, reserve: int):
        super().__init__()
        self.reserve, self.length = reserve, 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        end = self.length + key_states.shape[-2]
        if self.key_buffer is None or end > self.key_buffer.shape[-2]:
            self.key_buffer = self._grown(self.key_buffer, key_states, end + self.reserve)
            self.value_buffer = self._grown(self.value_buffer, value_states, end + self.reserve)
        self.key_buffer[..., self.length:end, :] = key_states
        self.value_buffer[..., self.length:end, :] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _grown(self, old, new: torch.Tensor, capacity: int) -> torch.Tensor:
        buffer = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
        if old is not None:
            buffer[..., :self.length, :] = old[..., :self.length, :]
        return buffer

    def _views(self) -> None:
        self.keys = self.key_buffer[..., :self.length, :]
        self.values = self.value_buffer[..., :self.length, :]

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.length:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.length:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._views()

    def reset(self) -> None:
        self.length, self.key_buffer, self.value_buffer = 0, None, None
        super().reset()


class GrowingCache(DynamicCache):
    """A DynamicCache whose layers keep room for `reserve` new tokens (GrowingLayer)."""

    def __init__(self, reserve: int):
        super().__init__()
        self.layer_class_to_replicate = partial(GrowingLayer, reserve)


def _cache_argument(module) -> str:
    """The name a model's forward takes its KV cache by: `cache` in recent transformers, else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _decoder_and_head(model):
    """(decoder, plain Linear LM head) of a causal LM, or (None, None) if it is not that shape."""
    from engine.logprobs import causal_lm

    lm = causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    special = getattr(lm.config, "final_logit_softcapping", None) or hasattr(lm, "logit_scale")
    if decoder is None or type(head) is not torch.nn.Linear or special:  # logits need more than the head
        return None, None
    return decoder, head


def generate(model, tokenizer, messages: list[dict], **options) -> list[dict]:
    """Run a whole generation without streaming (tests, benchmarks)."""
    gen = Generation(model, tokenizer, messages, **options)
    for _ in gen:
        pass
    return gen.results()
