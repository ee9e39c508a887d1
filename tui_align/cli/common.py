"""What every command shares: failing with one clear line, turning engine errors into it, and --config YAML."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import typer

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> None:
    """Print `error: message` on stderr and exit (2: usage and data errors)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning (as in the engine, engine/__main__.py).
    Only effective before torch is first imported: on 2 shared cores, spinning made steps
    several times slower."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def user_errors():
    """Show engine.protocol.UserError (bad flag, file or row) as one line, exit 2.

    Every command that imports torch in-process does so inside this block, so OpenMP is set
    up here first (passive_openmp)."""
    passive_openmp()
    from engine.protocol import UserError  # torch-free

    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


# --config FILE.yaml: every option of a command, set from YAML ---------------------------
# TRL's names for the options that we call otherwise, so that a TRL-style YAML mostly works.
TRL_NAMES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
             "gradient_accumulation_steps": "grad_accum", "model_name_or_path": "model", "output_dir": "output",
             "dataset_name": "data", "dataset_train_split": "split"}


def _yaml_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """Eager callback of --config: the file's values become the command's defaults (click's
    default_map), so any flag given on the command line wins."""
    if value is None or ctx.resilient_parsing:
        return value
    ctx.default_map = {**(ctx.default_map or {}), **read_config(value, ctx)}
    return value


CONFIG = typer.Option(None, "--config", is_eager=True, callback=_yaml_config, show_default=False,
                      help="YAML file of this command's options (`max_steps: 100` or `max-steps: 100`; TRL's "
                           "learning_rate, num_train_epochs, ... too); a flag on the command line wins.")


def read_config(path: Path, ctx) -> dict:
    """{parameter name: value} from a YAML file for `ctx.command`; a bad file, key or value: one line, exit 2."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--config {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        fail(f"--config {path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})")
    if values is None:
        return {}
    if not isinstance(values, dict):
        fail(f"--config {path}: expected `option: value` lines, got a {type(values).__name__}")
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in root.value}
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    out = {}
    for key, value in values.items():
        where = f"--config {path}:{lines.get(str(key), '?')}"
        name = TRL_NAMES.get(str(key), str(key)).replace("-", "_")
        param = params.get(name)
        if param is None:
            fail(f"{where}: unknown option {key!r} for `{ctx.command_path}` (its options: see --help)")
        if isinstance(value, list) and _annotation(param) is str:  # TRL's `loss_type: [sigmoid, sft]`
            value = ",".join(map(str, value))
        if isinstance(value, bool) and _annotation(param) in (int, float):  # YAML's true is no number
            fail(f"{where}: {key}: expected a number, got {str(value).lower()}")
        try:
            _coerce(param, ctx, value)
        except Exception as exc:  # the parameter's own conversion says what is wrong
            fail(f"{where}: {key}: {value!r}: {getattr(exc, 'message', None) or exc}")
        out[name] = value
    return out


def _annotation(param):
    """The Python type a parameter converts to (int, float, ...), where Typer keeps it."""
    descriptor = getattr(param, "type_descriptor", None)  # Typer >= 0.29 (its own click)
    if descriptor is not None:
        return descriptor.annotation
    return {"integer": int, "float": float}.get(getattr(getattr(param, "type", None), "name", ""))


def _coerce(param, ctx, value):
    """Convert `value` as the command line would; raises what the parameter raises on a bad value."""
    runtime = getattr(param, "get_runtime_param", None)
    if runtime is not None:  # Typer >= 0.29
        return runtime().coerce(value, param=param, ctx=ctx)
    return param.type_cast_value(ctx, value)
