"""How to read `simulate`'s base-model NLL: what the default model, its adapter off, makes of a few
hand-written replies, sensible and not, short and long (the mean negative log-likelihood per reply token,
end of turn included, as `score_reference` sums it, under simulate's system prompt).

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


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = load_model(None, device="cpu", dtype="float32")
    print("| nats / token | tokens | prompt | reply |\n|---|---|---|---|")
    for prompt, reply in REPLIES:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        prompt_ids, (completion,) = tokenize_pair(tokenizer, messages, [[{"role": "assistant", "content": reply}]])
        ids = torch.tensor([prompt_ids + completion])
        with torch.inference_mode():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        token_logps = logps.gather(1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1:]
        print(f"| {-token_logps.mean().item():.2f} | {len(completion)} | {prompt} | {reply[:60]} |")


if __name__ == "__main__":
    main()
