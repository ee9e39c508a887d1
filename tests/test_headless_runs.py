"""Headless runs as TRL users expect them: --config YAML, checkpoints and resume after a kill,
evaluation, --report-to (read back with TensorBoard's and Trackio's own readers), quiet output,
datasets sources, and the live engine's logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_cli_train import assert_user_error, invoke, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [{"prompt": f"Question {i}?", "chosen": f" Yes, {i}.", "rejected": f" No, {i} times no."} for i in range(8)]
# 8 rows, 2 held out: 6 to train on, 3 batches an epoch, 2 epochs = 6 steps; a kill after checkpoint-4 is in epoch 2.
RUN = ["train", "dpo", "--max-steps", "6", "--epochs", "2", "--batch-size", "2", "--lr", "2e-2", "--warmup-steps", "3",
       "--save-steps", "2", "--eval-split", "0.25", "--eval-steps", "2", "--rpo-alpha", "1.0"]

# A real process, killed by SIGKILL right after it has written checkpoint-4 (the crash a shared machine deals).
KILLED = textwrap.dedent('''
    import os, signal, sys
    from engine import checkpoints

    written = checkpoints.save

    def save_then_die(folder, *args, **kwargs):
        written(folder, *args, **kwargs)
        if folder.name == "checkpoint-4":
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.save = save_then_die
    from tui_align.cli import app
    app(sys.argv[1:])
''')


LIBRARY_WARNING = "`get_peft_model` is deprecated and will be removed"


def warning_first(function):
    """`function`, warning as a library does (a FutureWarning and a transformers log record) first."""
    def warned(*args, **kwargs):
        import warnings

        from transformers.utils import logging as hf_logging

        warnings.warn(LIBRARY_WARNING, FutureWarning)
        hf_logging.get_logger("transformers.modeling_utils").warning("a library's own log record")
        return function(*args, **kwargs)
    return warned


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One run killed after checkpoint-4 and resumed from `latest`, and the same run uninterrupted
    (reporting to TensorBoard)."""
    tmp = tmp_path_factory.mktemp("runs")
    data = write_jsonl(tmp / "prefs.jsonl", PAIRS)
    common = [*RUN, "--data", data, "--model", tiny_model_dir]
    script = tmp / "killed.py"
    script.write_text(KILLED)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, str(script), *map(str, common), "--output", str(tmp / "resumed")],
                            env=env, capture_output=True, text=True, timeout=300)
    partial = tmp / "resumed.partial"
    checkpoints = sorted(p.name for p in partial.glob("checkpoint-*"))
    resumed = invoke(*common, "--output", tmp / "resumed", "--resume-from-checkpoint", "latest")
    with pytest.MonkeyPatch.context() as patch:  # a library that warns, as peft < 0.22 did on every run
        patch.setattr("peft.get_peft_model", warning_first(__import__("peft").get_peft_model))
        straight = invoke(*common, "--output", tmp / "straight", "--report-to", "tensorboard")
    return {"tmp": tmp, "data": data, "common": common, "killed": killed, "checkpoints": checkpoints,
            "resumed": resumed, "straight": straight}


def test_a_killed_run_resumes_to_the_same_adapter(runs):
    from safetensors.torch import load_file

    assert runs["killed"].returncode == -9, runs["killed"].stderr[-2000:]
    assert runs["checkpoints"] == ["checkpoint-2", "checkpoint-4"]
    assert not (runs["tmp"] / "resumed").exists() or runs["resumed"].exit_code == 0
    for name in ("resumed", "straight"):
        assert runs[name].exit_code == 0, runs[name].output
    resumed, straight = (load_file(runs["tmp"] / name / "adapter_model.safetensors") for name in ("resumed", "straight"))
    assert resumed.keys() == straight.keys()
    assert any(float(t.abs().max()) > 1e-3 for k, t in straight.items() if "lora_B" in k)  # it trained
    # Float32 sums are not bit-reproducible from one process to the next on every CPU (up to 3e-5 after a
    # few Adam steps on an AVX512 Xeon); one step at lr 2e-2 moves a weight ~2e-2, a lost step far more than 1e-3.
    for key in straight:
        assert float((resumed[key] - straight[key]).abs().max()) < 1e-3, key
    meta = json.loads((runs["tmp"] / "resumed" / "metadata.json").read_text())
    assert meta["metrics"]["step"] == 6 and "eval/rewards/accuracies" in meta["metrics"]
    state = json.loads((runs["tmp"] / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["method"], state["step"], state["epoch"], state["offset"]) == ("dpo", 4, 1, 2)
    ckpt = runs["tmp"] / "resumed" / "checkpoint-4"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"} <= {p.name for p in ckpt.iterdir()}


def test_output_is_quiet_and_ends_with_one_summary_line(runs):
    stderr = runs["killed"].stderr
    assert "Warning" not in stderr and "warn(" not in stderr, stderr[-2000:]
    assert "training" not in stderr and "Loading weights" not in stderr  # no progress bar where stderr is no terminal
    log = (runs["tmp"] / "straight" / "train.log").read_text()
    assert LIBRARY_WARNING in log and "a library's own log record" in log  # they went to the log
    assert LIBRARY_WARNING not in runs["straight"].output and "own log record" not in runs["straight"].output
    out = runs["straight"].stdout.strip().splitlines()
    assert [line.split(":")[0] for line in out[:-1]] == ["eval at step 2", "eval at step 4", "eval at step 6"]
    last = out[-1]
    assert last.startswith("trained dpo on 6 rows -> ") and "eval/rewards/accuracies=" in last
    assert "PeftModel.from_pretrained(" in last and "--merge" in last and "logs" in last


def test_tensorboard_has_trl_metric_names_and_values(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = runs["tmp"] / "straight"
    events = EventAccumulator(str(output / "logs" / "straight"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/margins",
            "rewards/accuracies", "logps/chosen", "logps/rejected", "eval/loss", "eval/rewards/accuracies"} <= tags
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4, 6]
    # warmup over 3 steps: lr x 0, 1/3, 2/3, then lr
    assert [e.value for e in events.Scalars("learning_rate")] == pytest.approx(
        [0, 2e-2 / 3, 4e-2 / 3, 2e-2, 2e-2, 2e-2], rel=1e-6, abs=1e-9)
    final = json.loads((output / "metadata.json").read_text())["metrics"]
    assert events.Scalars("loss")[-1].value == pytest.approx(final["loss"], rel=1e-6)
    assert events.Scalars("eval/rewards/accuracies")[-1].value == pytest.approx(final["eval/rewards/accuracies"])


def test_checkpoint_of_another_method_model_or_data_is_refused(runs, tmp_path):
    ckpt = runs["tmp"] / "resumed" / "checkpoint-2"
    data = runs["data"]
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}])
    cases = [
        (["train", "sft", "--data", sft, "--model", runs["common"][-1]], "another method"),
        (["train", "dpo", "--data", data, "--model", tmp_path], "another model"),
        (["train", "dpo", "--data", write_jsonl(tmp_path / "other.jsonl", PAIRS[:5]), "--model", runs["common"][-1]],
         "another data"),
    ]
    for args, fragment in cases:
        result = invoke(*args, "--output", tmp_path / "out", "--resume-from-checkpoint", ckpt)
        assert_user_error(result, str(ckpt), fragment)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", "--resume-from-checkpoint", tmp_path)
    assert_user_error(result, "not a checkpoint folder")
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", "--resume-from-checkpoint", "latest")
    assert_user_error(result, "no checkpoint in")


def test_config_yaml_sets_options_and_a_flag_wins(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS[:4])
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data}\nmodel_name_or_path: {tiny_model_dir}\nmax-steps: 3\nbatch_size: 2\n"
                      "learning_rate: 1e-3\nbeta: 0.2\nmerge: false\n")
    result = invoke("train", "dpo", "--config", config, "--output", tmp_path / "out", "--max-steps", 1)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["metrics"]["step"] == 1  # the flag won
    assert (meta["config"]["lr"], meta["config"]["beta"], meta["config"]["batch_size"]) == (1e-3, 0.2, 2)


@pytest.mark.parametrize("text,fragments", [
    ("max_steps: 3\nepochs: 2\nwarmpu_steps: 3\n", [":3:", "unknown option 'warmpu_steps'"]),
    ("max_steps: [3\n", [":2:", "not valid YAML"]),
    ("lr: 1e-3\nmax_steps: many\n", [":2:", "max_steps: 'many'", "valid integer"]),
    ("max_steps: 2.5\n", [":1:", "max_steps: 2.5", "valid integer"]),
    ("beta: true\n", [":1:", "beta: expected a number, got true"]),
    ("- max_steps\n", ["expected `option: value` lines"]),
])
def test_bad_config_is_one_line_naming_key_and_line(tmp_path, text, fragments):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS[:2])
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", "--config", config)
    assert_user_error(result, str(config), *fragments)
    assert not (tmp_path / "out").exists()


def test_config_works_for_replay_and_ppo_too(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("steps: 2\nkl-coef: 0.1\nmethod: x\n")
    result = invoke("train", "ppo", "--prompts", tmp_path / "p.txt", "--reward", "length", "--output", tmp_path / "o",
                    "--config", config)
    assert_user_error(result, ":3:", "unknown option 'method'", "train ppo")
    result = invoke("replay", "s", "--output", tmp_path / "o", "--config", config)
    assert_user_error(result, ":1:", "unknown option 'steps'", "replay")


def test_bad_eval_file_and_eval_options(tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PAIRS[:4])
    bad = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "a", "completion": "b"}])
    result = invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", "--eval-data", bad)
    assert_user_error(result, "--eval-data", str(bad), "row 1", "missing keys chosen, rejected")
    for flags, fragment in [(["--eval-split", "1.5"], "--eval-split 1.5"),
                            (["--eval-steps", "2"], "--eval-steps needs held-out rows"),
                            (["--eval-split", "0.1", "--eval-data", bad], "exclude each other"),
                            (["--report-to", "mlflow"], "--report-to mlflow")]:
        assert_user_error(invoke("train", "dpo", "--data", data, "--output", tmp_path / "out", *flags), fragment)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_data_from_a_local_folder_datasets_reads(tmp_path):
    from datasets import Dataset

    from engine.data import EVAL_SPLITS, load_examples
    from engine.protocol import DataError

    folder = tmp_path / "prefs"
    folder.mkdir()
    Dataset.from_list(PAIRS[:5]).to_parquet(str(folder / "train.parquet"))
    Dataset.from_list(PAIRS[5:]).to_parquet(str(folder / "test.parquet"))
    assert load_examples(folder, "preference") == PAIRS[:5]
    assert load_examples(folder, "preference", preferred=EVAL_SPLITS) == PAIRS[5:]  # --eval-data takes the test split
    assert load_examples(folder, "preference", split="test") == PAIRS[5:]
    json_folder = tmp_path / "json"
    json_folder.mkdir()
    write_jsonl(json_folder / "rows.json", PAIRS[:3])
    assert load_examples(json_folder, "preference") == PAIRS[:3]
    with pytest.raises(DataError, match="no split 'dev'.*train, test"):
        load_examples(folder, "preference", split="dev")
    with pytest.raises(DataError, match="nobody-here/no-such-dataset: datasets.load_dataset could not read it"):
        load_examples("nobody-here/no-such-dataset", "preference")  # offline in tests: the hub is not reached


def test_trackio_logs_offline_and_reads_back(tmp_path):
    """Through our Tracker, in a process of its own (Trackio fixes its folder when imported)."""
    script = textwrap.dedent('''
        import json, sys
        from engine.tracking import PROJECT, Tracker
        tracker = Tracker("trackio", sys.argv[1], "run-1", {"lr": 1e-4, "max_steps": None})
        tracker.log({"loss": 0.7, "rewards/accuracies": 0.5, "step": 1, "sample": "text"}, 1)
        tracker.log({"loss": 0.4, "rewards/accuracies": 1.0}, 2)
        tracker.finish()
        from trackio.sqlite_storage import SQLiteStorage
        print(json.dumps([{k: row[k] for k in ("step", "loss", "rewards/accuracies")}
                          for row in SQLiteStorage.get_logs(PROJECT, "run-1")]))
    ''')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        {"step": 1, "loss": 0.7, "rewards/accuracies": 0.5}, {"step": 2, "loss": 0.4, "rewards/accuracies": 1.0}]


def test_live_engine_logs_each_update_at_its_version(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.live import EngineOptions, LiveEngine
    from engine.protocol import TrainConfig
    from engine.scheduler import Job

    import torch

    session = tmp_path / "my-session"
    threads = torch.get_num_threads()  # the engine sets torch's threads for the process: put them back after
    try:
        engine = LiveEngine(EngineOptions(model=str(tiny_model_dir), device="cpu", session_dir=str(session),
                                          report_to="tensorboard"))
    finally:
        torch.set_num_threads(threads)
    done = []
    for _ in range(2):
        job = Job("u", "update", 0)
        for _ in engine.update_job(job, "dpo", PAIRS[:2], TrainConfig(lr=1e-2), 1,
                                   lambda kind, **payload: done.append(payload) if kind == "done" else None):
            pass
    events = EventAccumulator(str(session / "logs" / "my-session"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([d["metrics"]["loss"] for d in done], rel=1e-6)
    assert "rewards/margins" in events.Tags()["scalars"]


def test_report_to_passes_from_chat_train_to_the_engine(tmp_path):
    from engine.__main__ import parser
    from tui_align.app import engine_client
    from tui_align.store import SessionStore

    with SessionStore.open(tmp_path, "s") as store:
        client = engine_client(store, None, "dpo", report_to="tensorboard")
    args = vars(parser().parse_args(["serve", *client.extra_args]))
    assert args["report_to"] == "tensorboard"
    result = invoke("chat-train", "--report-to", "paper", "--sessions-dir", tmp_path)
    assert_user_error(result, "--report-to paper")
