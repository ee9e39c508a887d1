"""`train ppo` and `train grpo` as the other headless runs: a run killed mid-way resumes to the same
adapter, value head and history; evaluation on held-out prompts is logged and printed; progress
bars on a terminal only; bad checkpoints and eval files get one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tests.test_cli_train import assert_user_error, invoke, write_jsonl
from tests.test_headless_runs import KILLED, ROOT

PROMPTS = ["Say yes.", "Name a colour.", "Count to three.", "Hi there."]
# 4 prompts, 1 held out; 4 steps of 2 replies; the adaptive KL moves its coefficient every step.
PPO = ["train", "ppo", "--reward", "length", "--steps", "4", "--batch-size", "2", "--mini-batch-size", "1",
       "--ppo-epochs", "1", "--max-new-tokens", "4", "--lr", "1e-2", "--target-kl", "0.1", "--save-steps", "2",
       "--eval-split", "0.25", "--eval-steps", "2", "--device", "cpu"]


def on_a_terminal(args: list[str], env: dict) -> tuple[int, str]:
    """Run `args` with stderr on a pseudo-terminal; (exit status, what the terminal got)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new one is 0 columns wide
    process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():  # the terminal's buffer must not fill up, or the run blocks on a redraw
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the run ended: the terminal is gone
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    status = process.wait(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return status, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """PPO killed after checkpoint-2 (its stderr on a terminal) and resumed from `latest`, and the same
    run uninterrupted, reporting to TensorBoard."""
    tmp = tmp_path_factory.mktemp("prompt-runs")
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = [*PPO, "--prompts", str(prompts), "--model", str(tiny_model_dir)]
    script = tmp / "killed.py"
    script.write_text(KILLED.replace('"checkpoint-4"', '"checkpoint-2"'))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    status, terminal = on_a_terminal([sys.executable, str(script), *common, "--output", str(tmp / "resumed")], env)
    checkpoints = sorted(p.name for p in (tmp / "resumed.partial").glob("checkpoint-*"))
    resumed = invoke(*common, "--output", tmp / "resumed", "--resume-from-checkpoint", "latest")
    straight = invoke(*common, "--output", tmp / "straight", "--report-to", "tensorboard")
    return {"tmp": tmp, "prompts": prompts, "common": common, "status": status, "terminal": terminal,
            "checkpoints": checkpoints, "resumed": resumed, "straight": straight}


def test_a_killed_ppo_run_resumes_to_the_same_adapter_value_head_and_history(runs):
    from safetensors.torch import load_file

    assert runs["status"] == -9, runs["terminal"][-2000:]
    assert runs["checkpoints"] == ["checkpoint-2"]
    for name in ("resumed", "straight"):
        assert runs[name].exit_code == 0, runs[name].output
    tmp = runs["tmp"]
    for file in ("adapter_model.safetensors", "value_head.safetensors"):
        resumed, straight = (load_file(tmp / name / file) for name in ("resumed", "straight"))
        assert resumed.keys() == straight.keys()
        # Float32 sums are not bit-reproducible from one process to the next on every CPU (up to 3.3e-5 on an
        # AVX512 Xeon); one step at lr 1e-2 moves a weight ~1e-2, a lost step far more than 1e-3.
        for key in straight:
            assert float((resumed[key] - straight[key]).abs().max()) < 1e-3, (file, key)
    assert any(float(t.abs().max()) > 1e-3 for k, t in load_file(tmp / "straight" / "adapter_model.safetensors").items()
               if "lora_B" in k)  # it trained
    histories = [[json.loads(line) for line in (tmp / name / "history.jsonl").read_text().splitlines()]
                 for name in ("resumed", "straight")]
    assert [h["step"] for h in histories[0]] == [1, 2, 3, 4]
    assert [h["sample"] for h in histories[0]] == [h["sample"] for h in histories[1]]  # the same replies
    for key in ("score", "kl", "kl_coef", "eval/reward"):  # the same scores, the same KL controller
        assert [h.get(key, 0.0) for h in histories[0]] == pytest.approx([h.get(key, 0.0) for h in histories[1]],
                                                                         rel=1e-3, abs=1e-5), key
    assert len({h["kl_coef"] for h in histories[1]}) > 1  # the adaptive coefficient moved
    state = json.loads((tmp / "resumed" / "checkpoint-2" / "trainer_state.json").read_text())
    assert (state["method"], state["step"], state["reward"]) == ("ppo", 2, "length")
    files = {p.name for p in (tmp / "resumed" / "checkpoint-2").iterdir()}
    assert {"optimizer.pt", "rng_state.pth", "adapter_model.safetensors", "value_head.safetensors"} <= files


def test_eval_on_held_out_prompts_is_printed_and_logged(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = runs["straight"].stdout.strip().splitlines()
    assert [line.split(":")[0] for line in out[:-1]] == ["eval at step 2", "eval at step 4"]
    assert "reward=" in out[0] and "completion_length=" in out[0]
    assert out[-1].startswith("trained ppo for 4 steps on 3 prompts -> ") and "eval reward " in out[-1]
    events = EventAccumulator(str(runs["tmp"] / "straight" / "logs" / "straight"))
    events.Reload()
    assert {"score", "kl", "kl_coef", "policy_loss", "eval/reward", "eval/completion_length"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval/reward")] == [2, 4]
    last = json.loads((runs["tmp"] / "straight" / "metadata.json").read_text())["metrics"]
    assert events.Scalars("eval/completion_length")[-1].value == pytest.approx(last["eval/completion_length"])
    assert 1 <= last["eval/completion_length"] <= 4


def test_progress_bars_on_a_terminal_only(runs):
    terminal = runs["terminal"]
    for phase in ("loading the model", "training", "evaluating"):
        assert phase in terminal, terminal[-2000:]
    assert "Loading weights" not in terminal  # the library's bar is hidden inside ours
    for name in ("resumed", "straight"):  # not a terminal: no bar at all
        stderr = runs[name].stderr
        assert not any(word in stderr for word in ("training", "loading", "Loading weights", "saving", "it/s")), stderr


def test_a_grpo_run_resumes_from_its_checkpoint_to_the_same_adapter(runs, tiny_model_dir):
    from safetensors.torch import load_file

    tmp = runs["tmp"]
    common = ["train", "grpo", "--prompts", runs["prompts"], "--reward", "length", "--num-generations", 2,
              "--steps", 3, "--max-new-tokens", 4, "--lr", "1e-2", "--save-steps", 2, "--model", tiny_model_dir]
    straight = invoke(*common, "--output", tmp / "grpo")
    assert straight.exit_code == 0, straight.output
    resumed = invoke(*common, "--output", tmp / "grpo-resumed", "--resume-from-checkpoint", tmp / "grpo" / "checkpoint-2")
    assert resumed.exit_code == 0, resumed.output
    first, second = (load_file(tmp / name / "adapter_model.safetensors") for name in ("grpo", "grpo-resumed"))
    assert any(float(t.abs().max()) > 1e-3 for k, t in first.items() if "lora_B" in k)
    for key in first:
        assert float((first[key] - second[key]).abs().max()) < 1e-6, key


def test_bad_checkpoints_and_eval_prompts_get_one_line(runs, tmp_path, tiny_model_dir):
    ckpt = runs["tmp"] / "resumed" / "checkpoint-2"
    prompts = runs["prompts"]
    base = ["--prompts", prompts, "--reward", "length", "--output", tmp_path / "out"]
    cases = [
        (["train", "grpo", *base, "--model", tiny_model_dir, "--resume-from-checkpoint", ckpt], [str(ckpt), "another method"]),
        (["train", "ppo", *base, "--model", tmp_path, "--resume-from-checkpoint", ckpt], [str(ckpt), "another model"]),
        (["train", "ppo", *base, "--model", tiny_model_dir, "--reward", "rm:/nowhere", "--eval-split", "0.25",
          "--resume-from-checkpoint", ckpt], ["another reward"]),
        (["train", "ppo", *base, "--resume-from-checkpoint", "latest"], ["no checkpoint in"]),
        (["train", "ppo", *base, "--eval-steps", "2"], ["--eval-steps needs held-out prompts"]),
        (["train", "grpo", *base, "--eval-prompts", write_jsonl(tmp_path / "eval.jsonl", [{"question": "?"}])],
         ["--eval-prompts", "eval.jsonl", "row 1", "\"prompt\""]),
        (["train", "ppo", *base, "--eval-split", "0.5", "--eval-prompts", prompts], ["exclude each other"]),
        (["train", "ppo", *base, "--save-steps", "0"], ["--save-steps must be at least 1"]),
    ]
    for args, fragments in cases:
        assert_user_error(invoke(*args), *fragments)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_phase_bar_hides_the_libraries_and_nests(monkeypatch):
    """Converting the model happens inside loading it: both bars reach the terminal, the libraries'
    own output inside them does not; where stderr is no terminal there is no bar at all."""
    import io

    from engine.progress import phase

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with phase("loading the model", 1) as loaded:
            with phase("converting the model", 2) as converted:
                print("Converting and de-quantizing GGUF tensors...", file=sys.stderr)
                converted()
                converted()
            loaded()
        monkeypatch.undo()
        text = stream.getvalue()
        assert ("converting the model" in text and "2/2" in text and "loading the model" in text) is shown, text
        assert "de-quantizing" not in text
