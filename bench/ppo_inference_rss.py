"""Peak RSS of plain inference on the default model: the baseline for the PPO demo's RSS.

Loads the model as `tui-align train ppo` does (no LoRA, no value head, no optimizer) and
samples the same batch of replies; prints the process's peak RSS in MB.
Run: flock /tmp/bench.lock .venv/bin/python bench/ppo_inference_rss.py
"""

import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.models import load_model  # noqa: E402

base, tokenizer = load_model(None)
prompts = [line.strip() for line in open(Path(__file__).with_name("ppo_prompts.txt")) if line.strip()][:4]
ids = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True) for p in prompts]
ids = [list(i["input_ids"]) if hasattr(i, "keys") else list(i) for i in ids]
width = max(map(len, ids))
input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i in ids])
attention_mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
with torch.no_grad():
    base.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=0, max_new_tokens=32,
                  pad_token_id=tokenizer.pad_token_id)
print(f"peak RSS, plain inference: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
