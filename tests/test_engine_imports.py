"""What each side imports: the person-facing process no torch, the engine nothing a bare GPU machine lacks.

bench/gpu.sh runs on a machine with torch, transformers, peft, accelerate and typer only; a
module-level import of any of the others anywhere on the serve / generate / update path would
break it there. The person-facing process imports, of the engine, only engine.TORCH_FREE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from engine import TORCH_FREE

ABSENT_ON_THE_GPU_MACHINE = ("textual", "sqlite_utils", "datasets", "gguf", "trl")
MODEL_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "trl",  # seconds to import, each
                  "pandas", "numpy")  # sqlite-utils would import them: tui_align hides them from it
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys, threading
    from types import SimpleNamespace

    BLOCKED = set(sys.argv[2].split(","))

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    try:
        import trl  # noqa
        raise SystemExit("the guard let trl through")
    except ModuleNotFoundError:
        pass

    import engine.server, engine.headless, engine.headless_ppo, engine.trainers.ppo, engine.trainers.reward  # noqa
    from engine.generation import generate
    from engine.live import EngineOptions, LiveEngine

    engine_ = LiveEngine(EngineOptions(model=sys.argv[1], device="cpu", session_dir="session"))
    replies = generate(engine_.policy, engine_.tokenizer, [{"role": "user", "content": "Hi"}], n=2, max_new_tokens=3, seed=0)
    assert len(replies) == 2
    rows = engine_.check_examples("dpo", [{"prompt": "Say yes.", "chosen": " yes", "rejected": " no"}])
    config, steps = engine_.check_hyperparameters("dpo", {})
    events = []
    for _ in engine_.update_job(SimpleNamespace(cancelled=threading.Event()), "dpo", rows, config, steps,
                                lambda kind, **payload: events.append(kind)):
        pass
    assert events[-1] == "done", events
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    print("loaded:", loaded)
''')


def test_serve_generate_and_update_need_none_of_the_absent_packages(tiny_model_dir, tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), str(tiny_model_dir), ",".join(ABSENT_ON_THE_GPU_MACHINE)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout


PERSON_FACING = textwrap.dedent('''
    import importlib, json, pkgutil, sys

    import engine
    import tui_align

    for name in engine.TORCH_FREE:
        importlib.import_module(name)
    for module in pkgutil.walk_packages(tui_align.__path__, "tui_align."):  # every module: the TUI, the CLI, the loop
        importlib.import_module(module.name)
    from typer.testing import CliRunner

    from tui_align.cli import app

    for args in (["--help"], ["chat-train", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("engine", *sys.argv[1].split(",")))))
''')


def test_the_person_facing_process_imports_no_torch_and_only_the_torch_free_engine_modules():
    done = subprocess.run([sys.executable, "-c", PERSON_FACING, ",".join(MODEL_PACKAGES)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert [name for name in loaded if name.split(".")[0] != "engine"] == []
    assert set(loaded) - {"engine", *TORCH_FREE} == set()
