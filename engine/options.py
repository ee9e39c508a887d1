"""The engine's options as plain dataclasses, and the checks run on them before the model loads.

Torch-free, so a bad option is one line and exit 2 within a fraction of a second: the
model (and torch, seconds to import) loads only once the options have passed. The
command line that fills these is engine/__main__.py's parser (no defaults there).
"""

from __future__ import annotations

import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path

from engine import versions as vs
from engine.models import LoRAConfig
from engine.protocol import LIVE_TRAINING, METHODS, UserError, loss_terms
from engine.resources import engine_threads
from engine.tracking import check_report_to


@dataclass
class EngineOptions:
    model: str | None = None  # a folder, GGUF file or hub id; None: the bundled default model
    method: str = "dpo"  # the update method when a request names none
    device: str = "auto"
    dtype: str = "auto"
    session_dir: str | None = None  # versions go to SESSION/versions/vNNNN; None: a temporary folder
    lora_r: int = LoRAConfig.r
    lora_alpha: int = LoRAConfig.alpha
    version: int | None = None  # the saved version to start at (0: the base); None: the latest
    threads: int | None = None  # torch's intra-op threads; None: all cores but one (engine_threads)
    report_to: str = "none"  # each update's metrics to a tracker (engine/tracking.py); TensorBoard's in SESSION/logs
    loss_type: str | None = None  # dpo updates' loss terms, comma-separated; None: LIVE_TRAINING's
    loss_weights: str | None = None  # their weights, comma-separated; None: 1.0 each (LIVE_TRAINING's with its terms)
    label_smoothing: float | None = None  # dpo updates' label smoothing; None: TrainConfig's
    gradient_checkpointing: bool = False  # updates recompute activations in the backward pass: less memory

    def check(self) -> None:
        """Refuse bad options before the model loads."""
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: choose {', '.join(METHODS)}")
        self.dpo_defaults()

    def dpo_defaults(self) -> dict:
        """What these options change in LIVE_TRAINING's dpo config."""
        out = {} if self.label_smoothing is None else {"label_smoothing": self.label_smoothing}
        if self.loss_type is not None or self.loss_weights is not None or out:
            weights = self.loss_weights if self.loss_type or self.loss_weights else LIVE_TRAINING.loss_weights
            out["loss_type"], out["loss_weights"] = loss_terms(self.loss_type or list(LIVE_TRAINING.loss_type), weights,
                                                               label_smoothing=out.get("label_smoothing", 0.0))
        return out


@dataclass
class ServeOptions(EngineOptions):
    socket: str | None = None
    listen: str | None = None  # HOST:PORT on loopback
    token_file: str | None = None
    watch_stdin: bool = False  # exit when stdin reaches EOF: the spawning client died


@dataclass
class Transport:
    socket_path: str | None = None  # a Unix socket, or
    address: tuple[str, int] | None = None  # (host, port) on loopback
    token: str | None = None  # what the first hello must carry; None: no hello needed


def check_options(options: ServeOptions) -> Transport:
    """Every check that needs no model; the transport to serve on."""
    options.check()
    engine_threads(options.threads)
    check_report_to(options.report_to)
    for flag, value in (("--lora-r", options.lora_r), ("--lora-alpha", options.lora_alpha)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    transport = check_transport(options)
    check_session(options)
    return transport


def check_transport(options: ServeOptions) -> Transport:
    if options.socket and options.listen:
        raise UserError("--socket and --listen exclude each other: choose one")
    token = read_token(options.token_file) if options.token_file else None
    if options.listen:
        address = listen_address(options.listen)
        if token is None:
            raise UserError("--listen needs --token-file: a TCP engine refuses clients without the token")
        return Transport(address=address, token=token)
    path = Path(options.socket or Path.cwd() / "engine.sock").expanduser()
    if len(str(path)) > 100:
        raise UserError(f"--socket {path}: path too long for a Unix socket (keep it under 100 characters)")
    if not path.parent.is_dir():
        raise UserError(f"--socket {path}: folder {path.parent} does not exist")
    if path.exists() and not stat.S_ISSOCK(path.stat().st_mode):
        raise UserError(f"--socket {path}: a file that is not a socket is in the way")
    return Transport(socket_path=str(path), token=token)


def read_token(token_file: str) -> str:
    """The token; refused, as ssh refuses an unprotected key, if group or others may read the file."""
    path = Path(token_file).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"--token-file {token_file}: {exc.strerror}") from None
    if mode & 0o077:
        raise UserError(f"--token-file {token_file}: permissions {mode:04o} let other users read it; "
                        f"run chmod 600 {token_file}")
    if not token:
        raise UserError(f"--token-file {token_file}: the file is empty")
    return token


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        port_number = int(port)
    except ValueError:
        raise UserError(f"--listen {listen}: expected HOST:PORT, e.g. 127.0.0.1:7860") from None
    if not loopback:
        raise UserError(f"--listen {listen}: only loopback addresses (use an SSH tunnel to reach it)")
    if not 0 <= port_number <= 65535:
        raise UserError(f"--listen {listen}: port {port_number} is out of range (0 to 65535; 0 picks a free one)")
    return host, port_number


def check_session(options: EngineOptions) -> None:
    """The session folder can hold versions, and the one to start at is saved there, intact."""
    if options.session_dir is None:
        if options.version:
            raise UserError(f"--version {options.version}: no --session-dir to load it from")
        return
    folder = Path(options.session_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--session-dir {folder}: not a folder")
    vs.check_start(folder / "versions", options.version, options.lora_r)
