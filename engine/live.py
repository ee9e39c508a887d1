"""The engine's model-side state: one policy (base + LoRA), its trainers and its versions.

Every method that touches the model is a job body: a generator whose each `next()` is one
unit of work, run by the scheduler's single worker thread (see engine/scheduler.py).
The `check_*` methods are pure validation, called on the server's event loop before a
job is queued, so a bad request is answered at once and never reaches the model.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from engine import versions as vs
from engine.chat import chat_ids, check_messages
from engine.data import DataError, conversational, validate, validate_group
from engine.live_versions import LiveVersions
from engine.logprobs import causal_lm
from engine.models import (LoRAConfig, add_lora, context_length, enable_gradient_checkpointing, load_model,
                           model_name, parameter_count)
from engine.options import EngineOptions
from engine.protocol import (LIVE_TRAINING, METHOD_KINDS, METHODS, PROTOCOL_VERSION, Cancelled, GRPOConfig, NonFiniteLoss,
                             NotAvailable, loss_terms)
from engine.resources import engine_threads
from engine.tracking import open_tracker
from engine.trainers import DPOTrainer, GRPOTrainer, KTOTrainer, SFTTrainer, TrainConfig
from engine.trainers.base import Step

# Scoring and training on a CPU use eager attention: torch's fused CPU kernel is slow on short masked
# packed rows (one-pair DPO step 0.57 -> 0.43 s); decoding keeps the model's own, ~5% faster there.
TRAIN_ATTENTION = {"cpu": "eager"}
MAX_STEPS_PER_UPDATE = 64
MAX_PREEMPTIONS = 5  # per part of a step, so a stream of generates cannot starve an update


class Preempted(Exception):
    """A generate is waiting: the update's current part stops mid-way, undone, to be redone after it."""


class LiveEngine:
    def __init__(self, options: EngineOptions):
        self.options = options
        self.started = time.time()
        self.session_dir = Path(options.session_dir)  # the server makes a temporary one when none is given
        self.root = self.session_dir / "versions"
        start = vs.check_start(self.root, options.version, options.lora_r)  # before the model: a bad one exits at once
        self.threads = engine_threads(options.threads)
        torch.set_num_threads(self.threads)  # before any parallel work; the worker thread inherits it
        base, self.tokenizer = load_model(options.model, device=options.device, dtype=options.dtype)
        torch.manual_seed(0)  # the same fresh adapter on every start: version 0 is reproducible
        self.policy = add_lora(base, LoRAConfig(r=options.lora_r, alpha=options.lora_alpha))
        if options.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        self.policy.eval()
        self.saved = LiveVersions(self.policy, self.root)
        self.device = str(next(self.policy.parameters()).device)
        self.dtype = str(next(self.policy.parameters()).dtype).removeprefix("torch.")
        self.parameters = parameter_count(self.policy)
        self.context = context_length(base)
        # No token spells more characters than the longest vocabulary entry: a prompt with more
        # characters than that many times the context is too long without being tokenized.
        self.longest_token = max(map(len, self.tokenizer.get_vocab()), default=1)
        self.decode_attention = self.attention = base.config._attn_implementation
        self.train_attention = TRAIN_ATTENTION.get(self.device.split(":")[0], self.decode_attention)
        self.tracker = open_tracker(options.report_to, self.session_dir / "logs", self.session_dir.name)
        self.trainers: dict = {}
        self.generate_waiting = lambda: False  # set by the server: is a generate queued?
        self._preemptible = False
        self._update_job = None  # the update whose step is running: its cancel stops the step too
        self._install_preemption()
        self.version = 0
        if start:  # resume where the last run stopped, or where the session's active version is
            self.saved.resume(start)
            self.version = start

    # --- answers that need no model work ------------------------------------------------

    def hello(self) -> dict:
        return {"model": model_name(self.options.model), "parameters": self.parameters, "device": self.device,
                "dtype": self.dtype, "threads": self.threads, "method": self.options.method, "version": self.version,
                "protocol": PROTOCOL_VERSION, "session_dir": str(self.session_dir), "pid": os.getpid()}

    def versions(self) -> list[dict]:
        return self.saved.listing()

    # --- validation (event loop, no model) ---------------------------------------------

    def check_generate(self, req) -> None:
        check_messages(req.messages, "messages")
        self.check_prompt(req.messages)
        if not 1 <= req.n <= 16:
            raise DataError("n must be between 1 and 16")
        if not 1 <= req.max_new_tokens <= 4096:
            raise DataError("max_new_tokens must be between 1 and 4096")
        if not (math.isfinite(req.temperature) and req.temperature >= 0):
            raise DataError("temperature must be a finite number >= 0 (0 is greedy)")
        if not 0 < req.top_p <= 1:
            raise DataError("top_p must be in (0, 1]")
        if req.version is not None:
            self.check_rollback(req.version)

    def check_prompt(self, messages: list[dict]) -> None:
        """A prompt must leave the model's context at least one position for the reply."""
        if self.context is None:
            return
        chars = sum(len(m["role"]) + len(m["content"]) for m in messages)
        if chars > self.context * self.longest_token:
            raise DataError(f"messages: {chars} characters, more than the model's context of {self.context} tokens holds")
        tokens = len(chat_ids(self.tokenizer, messages, add_generation_prompt=True))
        if tokens >= self.context:
            raise DataError(f"messages: the prompt is {tokens} tokens; the model's context is {self.context}, "
                            f"so a prompt may have at most {self.context - 1}")

    def check_examples(self, method: str, examples: list) -> list[dict]:
        if method not in METHODS:
            raise DataError(f"method {method!r}: choose {', '.join(METHODS)}")
        if not examples:
            raise DataError("examples is empty")
        rows = []
        for number, row in enumerate(examples, 1):
            try:
                if not isinstance(row, dict):
                    raise DataError("must be a JSON object")
                if method == "grpo":
                    validate_group(row)
                    rows.append(row)
                    continue
                row = conversational(row)
                validate(row, METHOD_KINDS[method])
                if method == "ppo":
                    score = row.get("score")
                    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                        raise DataError("score must be a finite number")
            except DataError as exc:
                raise DataError(f"example {number}: {exc}") from None
            rows.append(row)
        return rows

    def check_hyperparameters(self, method: str, values: dict) -> tuple[object, int]:
        """(trainer config, optimizer steps) for one update: live defaults + `values`."""
        values = dict(values)
        steps = values.pop("steps", LIVE_TRAINING.steps)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS_PER_UPDATE:
            raise DataError(f"hyperparameters.steps must be an integer from 1 to {MAX_STEPS_PER_UPDATE}")
        config_type = self._config_type(method)
        known = {f.name: f for f in fields(config_type)}
        aliases = {"rpo_alpha"} if method == "dpo" else set()  # the old name of the sft term's weight
        unknown = sorted(set(values) - set(known) - aliases)
        if unknown:
            raise DataError(f"unknown hyperparameter(s) {', '.join(unknown)} for {method}; "
                            f"known: steps, {', '.join(sorted(set(known) | aliases))}")
        values = {k: v for k, v in values.items() if v is not None}  # null: keep the default
        base = config_type.from_dict(self.live_defaults(method))
        loss = {key: values.pop(key) for key in ("loss_type", "loss_weights", "rpo_alpha") if key in values}
        for key, value in values.items():
            default = getattr(base, key)
            if isinstance(default, bool) or isinstance(value, bool):
                ok = isinstance(value, bool) and (default is None or isinstance(default, bool))
            elif isinstance(default, str):
                ok = isinstance(value, str)
            else:  # a number, or a field whose default is None (numbers in every such config)
                ok = isinstance(value, (int, float))
            if not ok:
                raise DataError(f"hyperparameters.{key} must be {type(default).__name__}, got {value!r}")
            if key == "batch_size" and value < 1:
                raise DataError(f"hyperparameters.batch_size must be at least 1 (rows per forward pass), got {value!r}")
        if config_type is TrainConfig:  # a new loss_type list starts from weights 1.0, not the default's
            weights = loss.get("loss_weights", None if "loss_type" in loss else base.loss_weights)
            values["loss_type"], values["loss_weights"] = loss_terms(
                loss.get("loss_type", base.loss_type), weights, loss.get("rpo_alpha"),
                values.get("label_smoothing", base.label_smoothing), option=lambda name: f"hyperparameters.{name}")
        config = replace(base, **values)
        return config, steps

    def live_defaults(self, method: str) -> dict:
        """The config an update of `method` starts from: LIVE_TRAINING, and the DPO loss options of `serve`."""
        return {**LIVE_TRAINING.for_method(method), **(self.options.dpo_defaults() if method == "dpo" else {})}

    def check_rollback(self, version: int) -> None:
        self.saved.check(version)

    # --- jobs (worker thread) ----------------------------------------------------------

    def generate_job(self, job, req, emit, received: float):
        from engine.generation import Generation

        began = time.perf_counter()  # the first next(): the job leaves the queue and runs
        other = None if req.version is None or req.version == self.version else self.saved.state(req.version)
        with self.saved.lent(other):  # the prefill too runs with the asked-for version
            gen = Generation(self.policy, self.tokenizer, req.messages, n=req.n, max_new_tokens=req.max_new_tokens,
                             temperature=req.temperature, top_p=req.top_p, seed=req.seed, started=began)
        while not gen.done:
            self._use_attention(self.decode_attention)
            if job.cancelled.is_set():
                gen.cancel()
                break
            with self.saved.lent(other):  # per step: an update step may run between two of them
                pieces = next(gen)
            for candidate, text in pieces:
                emit("token", candidate=candidate, text=text)
            yield
        emit("done", candidates=gen.results(), version=self.version if other is None else req.version, seed=gen.seed,
             seconds=round(time.perf_counter() - received, 4), queued_s=round(began - received, 4))

    def score_reference_job(self, job, rows: list[dict], emit):
        trainer = self.trainer("dpo")
        out = []
        for start in range(0, len(rows), 8):  # bounded batches; other jobs may run in between
            if job.cancelled.is_set():
                raise Cancelled("score_reference cancelled")
            chunk = rows[start:start + 8]
            self._use_attention(self.train_attention)
            for row, (chosen, rejected) in zip(chunk, trainer.reference_logps(chunk)):
                out.append({**row, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected})
            yield
        emit("done", examples=out)

    def update_job(self, job, method: str, rows: list[dict], config, steps: int, emit):
        started = time.perf_counter()
        trainer = self.trainer(method)
        trainer.config = config
        for group in trainer.optimizer.param_groups:
            group["lr"], group["weight_decay"] = config.lr, config.weight_decay
        before = self._snapshot(trainer)
        self._update_job = job
        metrics: dict = {}
        step, interruptions = 1, 0
        try:
            while step <= steps:
                if job.cancelled.is_set():
                    raise Cancelled(f"update cancelled before step {step}: discarded")
                if method == "ppo":  # PPO's step is several optimizer steps: it gives way only between them
                    self._use_attention(self.train_attention)
                    metrics = trainer.step_examples(rows)
                else:
                    update = Step(trainer, rows)
                    while not update.finished:  # a waiting generate runs between two parts
                        interruptions += yield from self._part(job, update)
                    metrics = update.apply()
                if not torch.isfinite(torch.nn.utils.get_total_norm(trainer.params)):
                    raise NonFiniteLoss("the weights became NaN or infinite (learning rate too high?): update discarded")
                emit("progress", step=step, steps=steps, metrics=_plain(metrics))
                step += 1
                yield
            # saved before it is acknowledged; a failed save discards the update like any error
            version = self.saved.save_next({"method": method, "parent": self.version, "examples": len(rows),
                                            "steps": steps, "metrics": _plain(metrics), "config": asdict(config)},
                                           value_head=trainer.value_head if method == "ppo" else None)
        except BaseException:
            self._restore(trainer, before)
            raise
        finally:
            self._update_job = None
        self.version = version
        if self.tracker is not None:
            try:
                self.tracker.log({**_plain(metrics), "examples": len(rows)}, version)
            except Exception as exc:  # the update is saved: a tracker's failure must not undo it
                print(f"engine: --report-to {self.options.report_to}: could not log version {version}: {exc}",
                      file=sys.stderr, flush=True)
        emit("done", version=version, metrics=_plain(metrics), seconds=round(time.perf_counter() - started, 4),
             preempted=interruptions)

    def _part(self, job, update: Step):
        """One part of an update's step; a generate that arrives meanwhile stops it, to be redone after
        the generate. Returns how many times it was stopped (at most MAX_PREEMPTIONS, then it runs through)."""
        for preempted in range(MAX_PREEMPTIONS + 1):
            if job.cancelled.is_set():
                raise Cancelled("update cancelled during a step: discarded")
            self._preemptible = preempted < MAX_PREEMPTIONS
            self._use_attention(self.train_attention)
            try:
                update.next_part()
            except Preempted:  # the part kept nothing: redo it after the generate
                yield
                continue
            finally:
                self._preemptible = False
            yield
            return preempted
        raise AssertionError("unreachable: the last try is not preemptible")

    def rollback_job(self, job, version: int, emit):
        yield  # one unit of work, done (and answered) in the second
        self.saved.load(version, value_head=getattr(self.trainers.get("ppo"), "value_head", None))
        for trainer in self.trainers.values():  # Adam's moments belong to the abandoned weights
            trainer.optimizer.state.clear()
        self.version = version
        emit("done", version=version)

    def save_job(self, job, path: str, merge: bool, emit):
        metadata = {"version": self.version, "model": model_name(self.options.model)}
        folder = self.saved.export(path, self.tokenizer, metadata, getattr(self.trainers.get("ppo"), "value_head", None))
        yield
        if merge:  # merge into a fresh copy of the base: the live model keeps its adapter
            base, _ = load_model(self.options.model, device="cpu", dtype=self.options.dtype)
            self.saved.export_merged(folder, self.tokenizer, base)
        emit("done", path=str(folder), version=self.version, merged=merge)

    # --- helpers -----------------------------------------------------------------------

    def trainer(self, method: str):
        """One trainer per method, built on first use and kept (its optimizer state too)."""
        if method not in self.trainers:
            if method == "dpo":
                self.trainers[method] = DPOTrainer(self.policy, self.tokenizer, TrainConfig.from_dict(self.live_defaults("dpo")))
            elif method in ("sft", "kto"):
                trainer = {"sft": SFTTrainer, "kto": KTOTrainer}[method]
                self.trainers[method] = trainer(self.policy, self.tokenizer, TrainConfig.from_dict(self.live_defaults(method)))
            elif method == "grpo":
                self.trainers[method] = GRPOTrainer(self.policy, self.tokenizer, GRPOConfig.from_dict(self.live_defaults("grpo")))
            else:
                try:
                    from engine.trainers.ppo import PPOTrainer
                except ImportError:
                    raise NotAvailable("ppo not available yet") from None
                if not hasattr(PPOTrainer, "step_examples"):
                    raise NotAvailable("ppo not available yet")
                trainer = PPOTrainer(self.policy, self.tokenizer)
                trainer.value_head.to(self.device)
                if self.version:
                    self.saved.load(self.version, value_head=trainer.value_head)
                self.trainers[method] = trainer
        return self.trainers[method]

    def _install_preemption(self) -> None:
        """Hooks on every decoder layer: during an update step, a waiting generate stops the
        forward (before a layer) or the backward (at a layer's output gradient)."""
        lm = causal_lm(self.policy)
        layers = getattr(lm.get_decoder() if hasattr(lm, "get_decoder") else lm, "layers", None) or []

        def check(*_):
            if self._preemptible:
                if self._update_job is not None and self._update_job.cancelled.is_set():
                    raise Cancelled("update cancelled during a step: discarded")
                if self.generate_waiting():
                    raise Preempted()

        def on_output(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            if self._preemptible and torch.is_tensor(tensor) and tensor.requires_grad:
                tensor.register_hook(check)

        for layer in layers:
            layer.register_forward_pre_hook(check)
            layer.register_forward_hook(on_output)

    def _use_attention(self, name: str) -> None:
        """Switch the model's attention kernel when it differs (about 1 ms)."""
        if name != self.attention:
            causal_lm(self.policy).set_attn_implementation(name)
            self.attention = name

    def _config_type(self, method: str):
        if method == "ppo":
            try:
                from engine.trainers.ppo import PPOConfig
            except ImportError:
                raise NotAvailable("ppo not available yet") from None
            return PPOConfig
        return GRPOConfig if method == "grpo" else TrainConfig

    def _snapshot(self, trainer) -> tuple:
        """The trained tensors (adapter, value head) and the optimizer state, to undo an update."""
        return [p.detach().clone() for p in trainer.params], _clone(trainer.optimizer.state_dict())

    def _restore(self, trainer, snapshot) -> None:
        params, optimizer = snapshot
        with torch.no_grad():
            for param, saved in zip(trainer.params, params):
                param.copy_(saved)
        trainer.optimizer.load_state_dict(optimizer)


def _clone(tree):
    """A deep copy of a state dict whose tensors torch clones (copy.deepcopy took 30 ms here)."""
    if torch.is_tensor(tree):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_clone(value) for value in tree]
    return tree  # numbers, strings, tuples of numbers (Adam's betas)


def _plain(metrics: dict) -> dict:
    """Metrics as JSON numbers (NaN/inf, which JSON lacks, become null)."""
    out = {}
    for key, value in metrics.items():
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out
