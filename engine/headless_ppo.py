"""Headless PPO (`tui-align train ppo`): prompts file -> rollouts -> reward -> PPO steps.

Runs in the calling process; the run itself is engine.headless's train_on_prompts, shared with
GRPO. The output folder (adapter, value head, tokenizer, history.jsonl with every step's
metrics) appears only when training has finished. The prompts files of `train ppo` and
`train grpo` are read here.
"""

from __future__ import annotations

from pathlib import Path

from engine.data import TRAIN_SPLITS, read_rows
from engine.headless import RunOptions, train_on_prompts
from engine.protocol import DataError, UserError


def load_prompts(path: str | Path, preferred: tuple[str, ...] = TRAIN_SPLITS) -> list:
    """Prompts from a .txt file (one per line) or JSONL / dataset rows with a "prompt"
    (a string, or a list of {role, content} messages); of a dataset, the first `preferred` split it has."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        try:
            prompts = [line.strip() for line in path.read_bytes().decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    else:
        prompts = []
        for number, row in enumerate(read_rows(path, preferred=preferred), 1):
            prompt = row.get("prompt")
            ok_text = isinstance(prompt, str) and prompt.strip()
            ok_messages = isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
            if not (ok_text or ok_messages):
                raise DataError(f"{path}: row {number}: needs a \"prompt\": a non-empty string or a list of {{role, content}} messages")
            prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def check_plot(plot: str | Path | None) -> None:
    if plot is None:
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install matplotlib); every step's metrics are "
                        "written to OUTPUT/history.jsonl anyway") from None


def train_ppo(prompts: list, reward_spec: str, output: str | Path, model: str | None, config, lora,
              steps: int, plot: str | Path | None = None, run: RunOptions | None = None,
              eval_prompts: list | None = None) -> list[dict]:
    """Train, then write `output` whole (engine.headless.train_on_prompts) and the plot. Under
    `accelerate launch` every process rolls out its own replies (PPOTrainer.fit averages the
    gradients) and the main process writes the folder and the plot."""
    from engine.trainers.base import process_state

    check_plot(plot)
    history = train_on_prompts("ppo", prompts, reward_spec, output, model, config, lora, steps, run, eval_prompts)
    if plot is not None and process_state().is_main_process:
        write_plot(history, plot, title=f"PPO, reward {reward_spec}")
    return history


def write_plot(history: list[dict], path: str | Path, title: str = "PPO") -> Path:
    """Mean score, KL and response length per step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for axis, key, label in zip(axes, ("score", "kl", "response_length"),
                                ("mean score", "KL(policy || reference) per reply", "response length (tokens)")):
        axis.plot(steps, [h[key] for h in history], marker=".")
        axis.set_xlabel("step")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
