"""How to read `simulate`'s base-model figures: what the default model, its adapter off, makes of a few
hand-written replies, sensible and not, short and long, under simulate's system prompt: the mean negative
log-likelihood per reply token, end of turn included, as `score_reference` sums it; and the prompt gain,
how many nats likelier the whole reply is after its own prompt than after another (the next different
prompt of the list, as simulate takes the next held-out prompt).

    .venv/bin/python bench/base_nll_scale.py
"""

from __future__ import annotations

import torch

from engine.data import tokenize_pair
from engine.models import load_model
from tui_align import DEFAULT_SYSTEM_PROMPT

REPLIES = [
    ("What is gravity?", "Gravity is the force that pulls objects toward each other."),
    ("What is gravity?", "Gravity is a fundamental force of nature that attracts objects with mass toward each other. "
                         "It keeps the planets in orbit around the Sun and gives us weight on Earth."),
    ("What is gravity?", "A force."),
    ("What is the capital of France?", "Paris."),
    ("How do I keep bread from going stale?", "Store it in a paper bag at room temperature."),
    ("Which season do you like best, and why?", "Spring, because the days get longer and warmer."),
    ("Which season do you like best, and why?", "Ascend!"),
    ("Which season do you like best, and why?", "Elvenstair."),
    ("What would you do on a free day?", "To do!"),
    ("What would you do on a free day?", "Yourourageous dayfree walkthe parkand readbooks."),
]


def reply_logps(model, tokenizer, prompt: str, reply: str):
    """Each reply token's log-probability after `prompt`, end of turn included."""
    messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    prompt_ids, (completion,) = tokenize_pair(tokenizer, messages, [[{"role": "assistant", "content": reply}]])
    ids = torch.tensor([prompt_ids + completion])
    with torch.inference_mode():
        logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return logps.gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1:]


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = load_model(None, device="cpu", dtype="float32")
    prompts = list(dict.fromkeys(prompt for prompt, _ in REPLIES))
    print("| nats / token | tokens | prompt gain (nats) | prompt | reply |\n|---|---|---|---|---|")
    for prompt, reply in REPLIES:
        own = reply_logps(model, tokenizer, prompt, reply)
        other = reply_logps(model, tokenizer, prompts[(prompts.index(prompt) + 1) % len(prompts)], reply)
        print(f"| {-own.mean().item():.2f} | {len(own)} | {(own.sum() - other.sum()).item():.1f} | {prompt} | {reply[:60]} |")


if __name__ == "__main__":
    main()
