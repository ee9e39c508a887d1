"""The headless loop of PPO and GRPO: draw prompts, sample completions, score them, update; with
checkpoints (`save_steps`, `resume_from`) and evaluation on held-out prompts (`eval_steps`).

A step draws `per_step` prompts (every prompt once per pass, in a new order each pass). Under
`accelerate launch` process r samples slots r, r + n, ... of them; each slot's completions come
from a seed of its own (the run's seed, the step, the slot), so a step samples the same whatever
the number of processes, and a resumed run samples exactly what the uninterrupted one did.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import checkpoints
from engine.chat import chat_ids


@dataclass
class Rollout:
    """One prompt and its sampled, scored completions."""

    prompt: str | list  # as the prompts file has it: text or messages
    prompt_ids: list[int]
    completions: list[list[int]]  # token ids, ending with the stop token where one was sampled
    texts: list[str]
    scores: list[float]


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt: messages (or a string, as one user message) through the chat template
    when the tokenizer has one, else the plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return chat_ids(tokenizer, messages, add_generation_prompt=True)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(prompt) -> str:
    """What a reward function sees as the prompt: the text, or the last message's content."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


class PromptDraw:
    """Prompt indices in shuffled passes; its place (passes done, offset in this pass, the random
    state before this pass's shuffle) is a checkpoint's data position."""

    def __init__(self, count: int, seed: int):
        self.count, self.rng = count, random.Random(seed)
        self.order: list[int] = []
        self.passes, self.offset = -1, 0
        self.pass_rng = None

    def take(self, k: int) -> list[int]:
        picked = []
        while len(picked) < k:
            if self.offset == len(self.order):
                self._new_pass()
            picked.append(self.order[self.offset])
            self.offset += 1
        return picked

    def _new_pass(self) -> None:
        self.pass_rng = self.rng.getstate()
        self.order = list(range(self.count))
        self.rng.shuffle(self.order)
        self.passes, self.offset = self.passes + 1, 0

    def position(self, step: int) -> checkpoints.Position:
        return checkpoints.Position(step=step, epoch=self.passes, offset=self.offset, epoch_rng=self.pass_rng)

    def restore(self, position: checkpoints.Position) -> None:
        if position.epoch_rng is None:  # nothing drawn yet
            return
        self.rng.setstate(position.epoch_rng)
        self._new_pass()
        self.passes, self.offset = position.epoch, position.offset


@torch.no_grad()
def roll_out(model, tokenizer, prompts: list, encoded: list[list[int]], slots: list[tuple[int, int]], n: int,
             config, reward) -> list[Rollout]:
    """For each (prompt index, seed) in `slots`: `n` completions sampled with that seed, then all of
    them scored by `reward(prompts, responses)` in one call."""
    from engine.generation import Generation

    model.eval()
    sampled = []
    for index, seed in slots:
        gen = Generation(model, tokenizer, None, n=n, max_new_tokens=config.max_new_tokens,
                         temperature=config.temperature, top_p=config.top_p, seed=seed, prompt_ids=encoded[index])
        for _ in gen:
            pass
        sampled.append((index, [c.tokens for c in gen.candidates], [r["text"] for r in gen.results()]))
    texts = [text for _, _, group in sampled for text in group]
    scores = list(reward([prompt_text(prompts[i]) for i, _, group in sampled for _ in group], texts)) if texts else []
    return [Rollout(prompts[i], encoded[i], completions, group, [float(s) for s in scores[k * n:(k + 1) * n]])
            for k, (i, completions, group) in enumerate(sampled)]


def evaluate(model, tokenizer, prompts: list, encoded: list[list[int]], n: int, config, reward,
             show: bool = False) -> dict:
    """Mean score and length (tokens) of `n` completions per held-out prompt, TRL's `eval/` names. Each
    prompt has the same seed at every evaluation, so what changes between two is the policy. Under
    `accelerate launch` the processes share the prompts."""
    from engine.progress import bar
    from engine.trainers.base import process_state

    state = process_state()
    totals = torch.zeros(3, dtype=torch.float64)  # score, tokens, completions
    for i in bar(range(state.process_index, len(prompts), state.num_processes), desc="evaluating", show=show,
                 leave=False):
        (done,) = roll_out(model, tokenizer, prompts, encoded, [(i, config.seed + i)], n, config, reward)
        totals += torch.tensor([sum(done.scores), sum(map(len, done.completions)), len(done.completions)],
                               dtype=torch.float64)
    if state.num_processes > 1:
        totals = totals.to(state.device)
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
    score, tokens, count = totals.tolist()
    return {"eval/reward": score / count, "eval/completion_length": tokens / count}


def fit(trainer, prompts: list, reward, steps: int, per_step: int, n: int, learn, on_step=None,
        output_dir: str | Path | None = None, resume_from: str | Path | None = None, identity: dict | None = None,
        eval_prompts: list | None = None, log=None, progress: bool = True) -> list[dict]:
    """Steps up to `steps`: draw `per_step` prompts, roll out `n` completions of each (this process's
    slots), `learn(rollouts) -> metrics`. Returns every step's metrics (with `step` and a `sample`).

    Every `config.save_steps` the main process writes output_dir/checkpoint-N (engine/checkpoints.py:
    the adapter, the value head, the optimizer, the trainer's own state, the draw's position, the
    RNG); `resume_from` continues from one as if never stopped. Every `config.eval_steps`, and at
    the last step, `eval_prompts` are evaluated (`evaluate`) into that step's metrics and printed.
    `log(metrics, step)` gets every step's metrics on the main process; `identity` (method, model,
    data, reward) goes into each checkpoint, to refuse resuming another run."""
    from engine.progress import bar
    from engine.trainers.base import print_eval, process_state

    cfg = trainer.config
    state = process_state()
    main = state.is_main_process
    encoded = [prompt_ids(trainer.tokenizer, p) for p in prompts]
    held_out = [prompt_ids(trainer.tokenizer, p) for p in eval_prompts or []]
    draw = PromptDraw(len(prompts), cfg.seed)
    start = 0
    if resume_from is not None:
        position = checkpoints.load(resume_from, trainer, None, draw.rng)
        draw.restore(position)
        start = trainer.steps = position.step
    history = []
    shown = bar(total=steps, initial=start, desc="training", show=progress and main)
    for step in range(start + 1, steps + 1):
        picked = draw.take(per_step)
        slots = [(picked[s], cfg.seed + (step - 1) * per_step + s)
                 for s in range(state.process_index, per_step, state.num_processes)]
        rolled = roll_out(trainer.model, trainer.tokenizer, prompts, encoded, slots, n, cfg, reward)
        metrics = {"step": step, **learn(rolled)}
        length = metrics.get("response_length", metrics.get("completion_length", 0.0))
        shown.set_postfix(score=f"{metrics['score']:.3g}", kl=f"{metrics['kl']:.3g}", len=f"{length:.3g}")
        shown.update(1)
        if eval_prompts and ((cfg.eval_steps and step % cfg.eval_steps == 0) or step == steps):
            evaluated = evaluate(trainer.model, trainer.tokenizer, eval_prompts, held_out, n, cfg, reward,
                                 show=progress and main)
            metrics.update(evaluated)
            if progress and main:
                print_eval(evaluated, step)
        if log and main:
            log(metrics, step)
        history.append({**metrics, "sample": rolled[0].texts[0] if rolled else ""})
        if on_step:
            on_step(history[-1])
        if output_dir and cfg.save_steps and step % cfg.save_steps == 0 and main:  # after on_step: what it wrote is in
            checkpoints.save(Path(output_dir) / f"{checkpoints.PREFIX}{step}", trainer, None, draw.position(step),
                             metrics, identity or {})
    shown.close()
    return history
