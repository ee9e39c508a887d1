"""One live DPO step on a window like the live loop's: 4 picks of the best of 4 (12 pairs, 3 per chat
prompt, one chosen reply each), the default model, as the live engine trains on a CPU. Prints the parts,
the median step time of steps 2-3, the tokens run and the loss.

    flock /tmp/bench.lock env PYTHONPATH=. .venv/bin/python bench/pick_step.py
"""
import statistics, sys, time, random
sys.path.insert(0, "bench")
from trl_race import add_options, our_policy, parse
import argparse
from engine.trainers import DPOTrainer, TrainConfig
from engine.trainers.base import Step
from engine.live import TRAIN_ATTENTION
from engine.logprobs import causal_lm
from tui_align import DEFAULT_SYSTEM_PROMPT
p = argparse.ArgumentParser(); add_options(p); args = parse(p)
model, tok = our_policy(args)
causal_lm(model).set_attn_implementation(TRAIN_ATTENTION["cpu"])
trainer = DPOTrainer(model, tok, TrainConfig(lr=2e-4, beta=0.1, batch_size=2, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0]))
rng = random.Random(0); words = "the a model reply short answer sentence helpful water light sun tree river".split()
say = lambda n: " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."
rows = []
for k in range(4):  # a window of 12: 4 picks of the best of 4
    prompt = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": say(12) + "?"}]
    chosen = [{"role": "assistant", "content": say(40)}]
    rows += [{"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant", "content": say(40)}]} for _ in range(3)]
trainer.reference_logps(rows)
secs = []
for _ in range(3):
    t = time.perf_counter(); u = Step(trainer, rows)
    while not u.finished: u.next_part()
    m = u.apply(); secs.append(time.perf_counter() - t)
print(f"parts {len(u.parts)} step {statistics.median(secs[1:]):.2f} s tokens {m['tokens']} loss {m['loss']:.5f}")
