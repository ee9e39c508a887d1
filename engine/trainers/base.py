"""What SFT and DPO share: the optimizer, one live step, and the batch `fit` loop.

A subclass defines `method` (what checkpoints record) and `loss(examples) -> (loss, metrics)`; one whose
loss splits over rows also defines `normalisers`, which `loss` then takes. `step` is the live loop's
entry point: one optimizer update on a handful of examples, cheap to call again and again on
the same model, computed `batch_size` rows at a time (`Step`). `fit` runs the same loss under accelerate, so `accelerate launch` spreads
it over GPUs or nodes unchanged.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from engine.protocol import NonFiniteLoss, TrainConfig


class Trainer:
    method = ""  # the `tui-align train` command it backs; a checkpoint of another method is refused
    def __init__(self, model, tokenizer, config: TrainConfig | None = None):
        self.model = model  # a PeftModel: base weights frozen, adapter trainable
        self.tokenizer = tokenizer
        self.config = config or TrainConfig()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, self.config)
        self.steps = 0
        self.world_size = 1  # processes whose gradients `step` averages (a launched `fit` sets it)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def loss(self, examples: list[dict]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def normalisers(self, examples: list[dict]) -> dict | None:
        """What the loss of `examples` divides by (e.g. their number), so that a part's loss with the
        same normalisers is its share of the whole; None: the loss does not split (KTO's KL point
        and GRPO's groups span the batch), and a step computes it in one part."""
        return None

    def parts(self, examples: list[dict], size: int) -> list[list[dict]]:
        """How a step splits `examples` into forward passes: `size` rows each (a trainer whose rows share
        work may keep those together)."""
        return [examples[i:i + size] for i in range(0, len(examples), size)]

    def step(self, examples: list[dict]) -> dict:
        """One optimizer update on `examples`; returns its metrics."""
        update = Step(self, examples)
        while not update.finished:
            update.next_part()
        return update.apply()

    def fit(self, rows: list[dict], output_dir: str | Path | None = None, progress: bool = True,
            on_step=None, eval_rows: list[dict] | None = None, resume_from: str | Path | None = None,
            log=None, identity: dict | None = None) -> dict:
        """Batch training over `rows`; returns the last logged metrics (and the last evaluation's).

        Every `save_steps` optimizer steps the main process writes output_dir/checkpoint-N
        (engine/checkpoints.py); `resume_from` continues from one as if never stopped. Every
        `eval_steps`, and at the end, `eval_rows` are evaluated. `log(metrics, step)` gets
        every step's and every evaluation's metrics under TRL's names, on the main process.
        `identity` (model, data) is written into each checkpoint, to refuse resuming another run.

        Under `accelerate launch` each process trains on its own shard and the LoRA
        gradients are averaged across processes before every optimizer step. The losses
        call the decoder directly (to project only completion positions), which bypasses a
        DistributedDataParallel forward, so the averaging is done here, explicitly: the
        adapter's gradients are a few MB.
        """
        from engine import checkpoints
        from engine.progress import bar as progress_bar

        cfg = self.config
        state = process_state()
        main = state.is_main_process
        torch.manual_seed(cfg.seed)
        order = random.Random(cfg.seed)
        scheduler = constant_with_warmup(self.optimizer, cfg.warmup_steps)
        per_process = math.ceil(len(rows) / state.num_processes)
        batches_per_epoch = math.ceil(per_process / cfg.batch_size)
        total = cfg.max_steps or math.ceil(batches_per_epoch * cfg.epochs / cfg.grad_accum)
        position = checkpoints.Position()
        if resume_from is not None:
            position = checkpoints.load(resume_from, self, scheduler, order)
        bar = progress_bar(total=total, initial=position.step, desc="training", show=progress and main)
        metrics: dict = {}
        window: list[float] = []
        step, micro = position.step, position.micro
        evaluated = None
        self.model.train()
        while step < total:
            epoch_rng = order.getstate()  # before this epoch's shuffle: a checkpoint replays it
            indices = list(range(len(rows)))
            if cfg.shuffle:
                order.shuffle(indices)
            indices += indices[: per_process * state.num_processes - len(indices)]  # equal shards: no rank waits alone
            shard = indices[state.process_index::state.num_processes]
            for start in range(position.offset, len(shard), cfg.batch_size):
                loss, batch_metrics = self.loss([rows[i] for i in shard[start:start + cfg.batch_size]])
                (loss / cfg.grad_accum).backward()
                micro += 1
                if micro % cfg.grad_accum:
                    continue
                average_gradients(self.params, state.num_processes)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                learning_rate = scheduler.get_last_lr()[0]
                self.optimizer.step()
                scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                window = (window + [loss.item()])[-20:]
                epoch = position.epoch + min(start + cfg.batch_size, len(shard)) / max(len(shard), 1)
                metrics = {**batch_metrics, "loss": loss.item(), "grad_norm": float(grad_norm),
                           "learning_rate": learning_rate, "epoch": round(epoch, 4), "step": step}
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                bar.update(1)
                if on_step:
                    on_step(metrics)
                if log and main:
                    log(metrics, step)
                if eval_rows and cfg.eval_steps and step % cfg.eval_steps == 0 and step < total:
                    evaluated = self._evaluate_and_report(eval_rows, step, progress and main, log)
                if output_dir and cfg.save_steps and step % cfg.save_steps == 0:
                    done = checkpoints.Position(step=step, epoch=position.epoch, offset=start + cfg.batch_size,
                                                micro=micro, epoch_rng=epoch_rng)
                    if main:
                        checkpoints.save(Path(output_dir) / f"{checkpoints.PREFIX}{step}", self, scheduler, done, metrics,
                                         identity or {})
                if step >= total:
                    break
            position = checkpoints.Position(epoch=position.epoch + 1)
        bar.close()
        if eval_rows:
            evaluated = self._evaluate_and_report(eval_rows, step, progress and main, log)
        self.model.eval()
        self.steps += step
        return {**metrics, **(evaluated or {})}

    @torch.no_grad()
    def evaluate(self, rows: list[dict], progress: bool = False) -> dict:
        """The loss and the loss's metrics over `rows` (eval mode, no update), averaged per row."""
        from engine.progress import bar

        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        try:
            for start in bar(range(0, len(rows), self.config.batch_size), desc="evaluating", leave=False,
                             show=progress):
                batch = rows[start:start + self.config.batch_size]
                loss, metrics = self.loss(batch)
                for key, value in {"loss": loss.item(), **metrics}.items():
                    if isinstance(value, float):
                        sums[key] = sums.get(key, 0.0) + value * len(batch)
        finally:
            self.model.train(was_training)
        return {key: total / len(rows) for key, total in sums.items()}

    def _evaluate_and_report(self, rows: list[dict], step: int, show: bool, log) -> dict:
        evaluated = {f"eval/{k}": v for k, v in self.evaluate(rows, progress=show).items()}
        if show:
            print_eval(evaluated, step)
        if log and process_state().is_main_process:
            log(evaluated, step)
        return evaluated

    def save(self, folder: str | Path, metadata: dict | None = None) -> Path:
        from engine.versions import save_adapter

        return save_adapter(self.model, folder, {"config": self.config.to_dict(), **(metadata or {})})


class Step:
    """One optimizer update whose gradient is summed a part (`config.batch_size` rows) at a time.

    The parts share the whole update's normalisers, so their summed losses and gradients are
    the one-pass ones: a 12-pair live update needs a third of the memory, and the live
    engine runs a waiting generate between two parts and redoes only an interrupted one.
    A part that fails leaves nothing behind: its gradients are added only once it is done.
    """

    def __init__(self, trainer: Trainer, examples: list[dict]):
        self.trainer, self.started = trainer, time.perf_counter()
        size = max(trainer.config.batch_size, 1)
        # one part needs no shared normalisers; it is `examples` itself (GRPO knows its rows by identity)
        self.norm = trainer.normalisers(examples) if len(examples) > size else None
        self.parts = [examples] if self.norm is None else trainer.parts(examples, size)
        self.done = 0
        self.grads: list[torch.Tensor | None] = [None] * len(trainer.params)
        self.metrics: dict = {}
        self.loss = 0.0

    @property
    def finished(self) -> bool:
        return self.done == len(self.parts)

    def next_part(self) -> None:
        trainer, part = self.trainer, self.parts[self.done]
        trainer.model.train()
        try:
            loss, metrics = trainer.loss(part) if self.norm is None else trainer.loss(part, self.norm)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()}: update discarded")
            loss.backward()
            for i, param in enumerate(trainer.params):
                if param.grad is not None:
                    self.grads[i] = param.grad if self.grads[i] is None else self.grads[i].add_(param.grad)
        finally:
            trainer.optimizer.zero_grad(set_to_none=True)  # a part stopped mid-way keeps none of its gradients
            trainer.model.eval()
        self.loss += loss.item()
        for key, value in metrics.items():  # under shared normalisers each part's metrics are its share
            self.metrics[key] = self.metrics.get(key, 0) + value
        self.done += 1

    def apply(self) -> dict:
        """The optimizer update with the summed gradients; its metrics."""
        trainer = self.trainer
        try:
            for param, grad in zip(trainer.params, self.grads):
                param.grad = grad
            average_gradients(trainer.params, trainer.world_size)
            grad_norm = torch.nn.utils.clip_grad_norm_(trainer.params, trainer.config.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLoss(f"gradient norm is {grad_norm.item()}: update discarded")
            trainer.optimizer.step()
        finally:
            trainer.optimizer.zero_grad(set_to_none=True)
            self.grads = [None] * len(trainer.params)
        trainer.steps += 1
        return {**self.metrics, "loss": self.loss, "grad_norm": grad_norm.item(),
                "seconds": time.perf_counter() - self.started}


def print_eval(evaluated: dict, step: int) -> None:
    """`eval at step N: loss=..., ...` on stdout, above the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"eval at step {step}: " + ", ".join(f"{k.removeprefix('eval/')}={v:.4g}" for k, v in evaluated.items()))


def adamw(params: list, config) -> torch.optim.AdamW:
    """AdamW, fused: one kernel over all tensors (a live step's optimizer update took 17 ms
    tensor by tensor on a CPU, 6 ms fused; HF Trainer's default is the fused one too)."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def constant_with_warmup(optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over `warmup_steps`, then stays (transformers'
    constant_with_warmup; 0 steps: constant)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step / warmup_steps if step < warmup_steps else 1.0)


def process_state():
    """This process's place among those `accelerate launch` (or torchrun) started.

    On a machine without CUDA, accelerate only joins the processes (gloo) when asked for
    the CPU explicitly.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def average_gradients(params: list, world_size: int) -> None:
    """Average the gradients of `params` over all processes (one all-reduce)."""
    if world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset: offset + g.numel()].view_as(p).clone()
        offset += g.numel()
