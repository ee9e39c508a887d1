"""Headless training: `train` for `tui-align train sft|dpo|kto|rm` and `tui-align replay`,
`train_on_prompts` for `train ppo|grpo`.

Runs in the calling process so that `accelerate launch tui-align train ...` spreads it
over GPUs unchanged. While it runs, everything goes to OUTPUT.partial/ (checkpoints, the
log, TensorBoard's logs/, PPO's and GRPO's history.jsonl); the output folder appears only
when training has finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine import checkpoints
from engine.protocol import GRPOConfig, UserError
from engine.models import LoRAConfig, add_lora, enable_gradient_checkpointing, load_model
from engine.progress import phase
from engine.trainers import DPOTrainer, GRPOTrainer, KTOTrainer, RewardTrainer, SFTTrainer, TrainConfig

TRAINERS = {"sft": SFTTrainer, "dpo": DPOTrainer, "rm": RewardTrainer, "kto": KTOTrainer,
            "grpo": GRPOTrainer}  # grpo: on stored scored groups (`replay`); `train grpo` samples its own (train_on_prompts)
HISTORY = "history.jsonl"  # PPO's and GRPO's every step's metrics, one JSON object a line


@dataclass
class RunOptions:
    """What a headless run does besides training (each is a `tui-align train` option)."""

    merge: bool = False  # also write OUTPUT/merged, the base with the adapter merged in
    device: str = "auto"
    resume: str | None = None  # a checkpoint folder, or "latest" (the newest in OUTPUT.partial)
    report_to: str = "none"  # none, tensorboard, trackio or wandb (engine/tracking.py)
    log: object | None = None  # the RunLog (engine/headless_log.py) to write into the run's folder
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 slower
    progress: bool = True  # progress bars (drawn only where stderr is a terminal) and the eval lines


def check_output(output: str | Path) -> Path:
    output = Path(output)
    if output.exists() and any(output.iterdir() if output.is_dir() else [output]):
        raise UserError(f"--output {output} already exists: choose a new folder (nothing was written)")
    return output


def work_dir(output: Path) -> Path:
    """Where a run writes until it has finished (checkpoints, log, logs/)."""
    return output.with_name(output.name + ".partial")


@contextlib.contextmanager
def kept_if_resumable(partial: Path):
    """A run that fails leaves nothing behind, unless it wrote a checkpoint to resume from."""
    try:
        yield
    except BaseException:
        if partial.is_dir() and checkpoints.latest(partial) is None:
            shutil.rmtree(partial, ignore_errors=True)
        raise


def model_id(model: str | None) -> str | None:
    """The model as a checkpoint or a reward model records it: a folder or file by its absolute path."""
    return str(Path(model).expanduser().resolve()) if model and Path(model).expanduser().exists() else model


def save_beside(trainer, folder: Path, metadata: dict) -> None:
    """The trainer's adapter files into `folder`, beside what is there (checkpoints, the log, logs/)."""
    tmp = folder / "adapter.tmp"
    trainer.save(tmp, metadata)
    for item in tmp.iterdir():
        item.replace(folder / item.name)
    tmp.rmdir()


def split_rows(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): `fraction` of the rows held out, chosen by `seed`; at least one row on each side."""
    if not 0 < fraction < 1:
        raise UserError(f"--eval-split {fraction}: a fraction between 0 and 1, e.g. 0.1")
    if len(rows) < 2:
        raise UserError(f"--eval-split: {len(rows)} row(s) cannot be split into training and held-out rows")
    held = min(max(1, math.ceil(len(rows) * fraction)), len(rows) - 1)
    indices = list(range(len(rows)))
    random.Random(seed).shuffle(indices)
    chosen = set(indices[:held])
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


def resume_point(resume: str | None, output: Path, identity: dict) -> Path | None:
    """The checkpoint to resume from, checked against this run before the model loads."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints.latest(work_dir(output))
        if found is None:
            raise UserError(f"--resume-from-checkpoint latest: no checkpoint in {work_dir(output)} "
                            "(write them with --save-steps)")
        resume = found
    folder = Path(resume).expanduser()
    checkpoints.check(folder, identity)
    return folder


def load_policy(method: str, model: str | None, device: str, lora: LoRAConfig, run: RunOptions):
    """(policy with a fresh LoRA adapter, tokenizer): the loading phase, with its progress bar."""
    with phase("loading the model", 2, show=run.progress) as done:
        if method == "rm":
            from engine.trainers.reward import add_reward_lora, load_reward_base

            base, tokenizer = load_reward_base(model, device=device)
            done()
            policy = add_reward_lora(base, lora)
        else:
            base, tokenizer = load_model(model, device=device)
            done()
            policy = add_lora(base, lora)
        if run.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        done()
    return policy, tokenizer


def finish(trainer, tokenizer, partial: Path, output: Path, metadata: dict, run: RunOptions) -> None:
    """The saving phase: the adapter and the tokenizer (and with `run.merge` a merged model) beside
    what the run wrote, then OUTPUT.partial becomes OUTPUT."""
    with phase("saving", 2 + run.merge, show=run.progress) as done:
        save_beside(trainer, partial, metadata)
        done()
        tokenizer.save_pretrained(partial)
        done()
        if run.merge:
            from engine.versions import save_merged

            save_merged(trainer.model, tokenizer, partial / "merged")
            done()
    shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)


def start(partial: Path, run: RunOptions, seed: int) -> bool:
    """What a run does before loading the model; True on the main process (which writes the folder)."""
    import torch

    from engine.trainers.base import process_state

    main = process_state().is_main_process
    if main:
        partial.mkdir(parents=True, exist_ok=True)
        if run.log is not None:
            run.log.attach(partial)
    torch.manual_seed(seed)
    return main


def train(method: str, rows: list[dict], output: str | Path, model: str | None, config: TrainConfig | GRPOConfig,
          lora: LoRAConfig, run: RunOptions | None = None, metadata: dict | None = None,
          eval_rows: list[dict] | None = None) -> dict:
    """Fit a LoRA adapter on `rows`, save it to `output` (and a merged model with `run.merge`)."""
    from engine.tracking import check_report_to, open_tracker
    from engine.trainers.base import process_state

    run = run or RunOptions()
    output = check_output(output)
    partial = work_dir(output)
    identity = {"method": method, "model": model_id(model), "data": checkpoints.fingerprint(rows)}
    resume_from = resume_point(run.resume, output, identity)
    check_report_to(run.report_to)
    if config.eval_steps and not eval_rows:
        raise UserError("--eval-steps needs held-out rows: --eval-data FILE or --eval-split 0.1")
    state = process_state()
    with kept_if_resumable(partial):
        main = start(partial, run, config.seed)
        policy, tokenizer = load_policy(method, model, run.device if run.device != "auto" else str(state.device),
                                        lora, run)
        trainer = TRAINERS[method](policy, tokenizer, config)
        tracker = open_tracker(run.report_to, partial / "logs", output.name, {"method": method, **config.to_dict()})
        try:
            metrics = trainer.fit(rows, output_dir=partial, eval_rows=eval_rows, resume_from=resume_from,
                                  log=tracker.log if tracker else None, identity=identity, progress=run.progress)
        finally:
            if tracker is not None:
                tracker.finish()
        if method == "rm" and not eval_rows:  # how well it separates the pairs it was trained on
            metrics.update({f"train/{k}": v for k, v in trainer.evaluate(rows).items() if k != "loss"})
        if main:
            finish(trainer, tokenizer, partial, output, {"method": method, "model": identity["model"], "rows": len(rows),
                                                         "metrics": metrics, **(metadata or {})}, run)
    if tracker is not None:
        metrics["logged_to"] = str(tracker.where).replace(str(partial), str(output))
    return metrics


def train_on_prompts(method: str, prompts: list, reward_spec: str, output: str | Path, model: str | None, config,
                     lora: LoRAConfig, steps: int, run: RunOptions | None = None,
                     eval_prompts: list | None = None) -> list[dict]:
    """PPO or GRPO (`method`) for `steps` steps on `prompts`, scored by `reward_spec` (engine/rewards.py);
    writes `output` whole (adapter, value head for PPO, tokenizer, history.jsonl of every step) and
    returns the run's history, the steps before a resume included. Under `accelerate launch` every
    process rolls out its share and trains; the main process writes."""
    from engine.rewards import load_reward
    from engine.tracking import check_report_to, open_tracker
    from engine.trainers.base import process_state
    from engine.trainers.ppo import PPOTrainer

    run = run or RunOptions()
    output = check_output(output)
    partial = work_dir(output)
    identity = {"method": method, "model": model_id(model), "data": checkpoints.fingerprint(prompts),
                "reward": reward_spec}
    resume_from = resume_point(run.resume, output, identity)
    check_report_to(run.report_to)
    if config.eval_steps and not eval_prompts:
        raise UserError("--eval-steps needs held-out prompts: --eval-prompts FILE or --eval-split 0.1")
    state = process_state()
    device = run.device if run.device != "auto" else str(state.device)  # under accelerate: this process's own
    reward = load_reward(reward_spec, device=device)  # user code fails here, before the model loads
    with kept_if_resumable(partial):
        main = start(partial, run, config.seed)
        policy, tokenizer = load_policy(method, model, device, lora, run)
        trainer = {"ppo": PPOTrainer, "grpo": GRPOTrainer}[method](policy, tokenizer, config)
        tracker = open_tracker(run.report_to, partial / "logs", output.name, {"method": method, **config.to_dict()})
        history_file = partial / HISTORY
        if main:  # a resumed run keeps the steps up to its checkpoint
            done = json.loads((resume_from / checkpoints.STATE).read_text())["step"] if resume_from else 0
            kept = [h for h in read_history(history_file) if h["step"] <= done] if history_file.exists() else []
            history_file.write_text("".join(json.dumps(h) + "\n" for h in kept))

        def on_step(metrics: dict) -> None:
            if main:
                with history_file.open("a") as file:
                    file.write(json.dumps(metrics) + "\n")

        try:
            history = trainer.fit_online(prompts, reward, steps, on_step=on_step, output_dir=partial,
                                       resume_from=resume_from, identity=identity, eval_prompts=eval_prompts, log=tracker.log if tracker else None,
                        progress=run.progress)
        finally:
            if tracker is not None:
                tracker.finish()
        if not main:
            return history
        history = read_history(history_file)
        metrics = {k: v for k, v in history[-1].items() if k != "sample"}
        finish(trainer, tokenizer, partial, output, {"model": model, "reward": reward_spec, "steps": steps,
                                                     "prompts": len(prompts), "metrics": metrics}, run)
    return history


def read_history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
