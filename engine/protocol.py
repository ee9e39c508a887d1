"""The wire protocol between the TUI (or any client) and the engine: plain JSON, one object a line.

Every message has `type`, `id` (the request it belongs to) and `v` (PROTOCOL_VERSION).
Requests go client -> engine; events (token, progress, done, error) go engine -> client.
This module imports nothing heavy: the person-facing process imports it at start-up.
docs/protocol.md is the contract; keep the two in step.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

PROTOCOL_VERSION = 1
MAX_DEPTH = 32  # arrays and objects nested in one message; an update's examples nest 5
METHODS = ("dpo", "sft", "ppo", "kto", "grpo")  # what an `update` trains: the signal each kind of feedback gives
METHOD_KINDS = {"dpo": "preference", "sft": "sft", "ppo": "sft", "kto": "kto",
                "grpo": "group"}  # engine.data's rows of each (ppo adds a score; grpo's are rated groups)
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")  # where training metrics go (engine/tracking.py)


class ProtocolError(ValueError):
    """A line that is not a valid message; the text says what was wrong."""


# Errors whose message is meant for the user (one line, no traceback); the engine answers
# them with the codes bad_request and non_finite_loss, a CLI prints them and exits 2.
class UserError(Exception):
    """Bad input from the user (a flag, a file, a row): the CLI prints it and exits 2."""


class ModelError(UserError):
    """A model could not be resolved or loaded."""


class DataError(UserError):
    """Bad training data; the message names the file and row."""


class NonFiniteLoss(Exception):
    """The loss or gradient was NaN or infinite; no weight was changed."""


class Cancelled(Exception):
    """A request was cancelled (code `cancelled`)."""


class NotAvailable(Exception):
    """The engine lacks what the request needs, e.g. a method's trainer (code `not_available`)."""


# Training hyperparameters -------------------------------------------------------------
# An `update` request's `hyperparameters` are fields of TrainConfig (plus `steps`); they live
# here, torch-free, so the person-facing side and the CLI can read the defaults.


class DictConfig:
    """For the config dataclasses: to and from plain dicts (unknown keys and None values are dropped)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})


DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")  # TRL 1.16 DPOTrainer's
SFT_TERM = "sft"  # in a DPO loss list, the NLL of the chosen reply (TRL's name; once RPO's rpo_alpha)
# ... or of the chosen reply's tokens after the prefix it shares with the rejected one, a mean per pair: an
# edit that adds a sentence is taught that sentence, not again the reply it kept (not TRL's).
SFT_SUFFIX_TERM = "sft_suffix"
LOSS_TERMS = DPO_LOSS_TYPES + (SFT_TERM, SFT_SUFFIX_TERM)


def cli_option(name: str) -> str:
    """A TrainConfig field as the command line spells it."""
    return "--" + name.replace("_", "-")


def loss_terms(loss_type, loss_weights=None, rpo_alpha=None, label_smoothing: float = 0.0,
               option=cli_option) -> tuple[list[str], list[float]]:
    """The DPO loss terms and their weights, as TRL's `loss_type` list and `loss_weights`.

    Each is a list or a comma-separated string; no weights means 1.0 each. `rpo_alpha`, the
    old name of the sft term's weight, sets the weight of the list's sft or sft_suffix term
    (adding sft if it has neither; 0 removes it).
    `label_smoothing` is checked against the terms that use it. `option(field)` is how the
    caller's user spells a field, for the error messages.
    """
    types = [t.strip() for t in loss_type.split(",")] if isinstance(loss_type, str) else loss_type
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise UserError(f"{option('loss_type')} {loss_type!r}: one loss name or a comma-separated list of them")
    unknown = [t for t in types if t not in LOSS_TERMS]
    if unknown or len(set(types)) < len(types):
        what = f"unknown loss type {unknown[0]!r}" if unknown else "a loss type is listed twice"
        raise UserError(f"{option('loss_type')} {','.join(types)}: {what}; choose from {', '.join(LOSS_TERMS)}")
    weights = [1.0] * len(types)
    if loss_weights is not None:
        try:
            parts = loss_weights.split(",") if isinstance(loss_weights, str) else list(loss_weights)
            weights = [float(w) for w in parts if not isinstance(w, bool)]
        except (TypeError, ValueError):
            parts, weights = [None], []
        if not weights or len(weights) < len(parts) or not all(math.isfinite(w) for w in weights):
            raise UserError(f"{option('loss_weights')} {loss_weights!r}: finite numbers, one per loss type")
        if len(weights) != len(types):
            raise UserError(f"{option('loss_weights')} has {len(weights)} weight(s) for {len(types)} loss type(s) "
                            f"({','.join(types)}): give one per loss type")
    if rpo_alpha is not None:
        nll = next((t for t in types if t in (SFT_TERM, SFT_SUFFIX_TERM)), SFT_TERM)  # the list's chosen-NLL term
        if isinstance(rpo_alpha, bool) or not isinstance(rpo_alpha, (int, float)) or not math.isfinite(rpo_alpha):
            raise UserError(f"{option('rpo_alpha')} {rpo_alpha!r}: a finite number, the weight of the {nll} term")
        types, weights = list(types), list(weights)
        if nll not in types:
            types, weights = [*types, nll], [*weights, 0.0]
        weights[types.index(nll)] = float(rpo_alpha)
        if not rpo_alpha:
            del weights[types.index(nll)]
            types.remove(nll)
        if not types:
            raise UserError(f"{option('rpo_alpha')} 0 removes the only loss term ({nll}): give a DPO loss type")
    smoothing = option("label_smoothing")
    if not 0 <= label_smoothing < 1:
        raise UserError(f"{smoothing} {label_smoothing}: must be in [0, 1)")
    if "robust" in types and not label_smoothing < 0.5:
        raise UserError(f"{smoothing} {label_smoothing}: robust's flip rate must be below 0.5")
    if "exo_pair" in types and not label_smoothing > 0:
        raise UserError(f"{smoothing} 0: exo_pair needs its epsilon > 0 (the EXO paper recommends 1e-3)")
    return list(types), weights


@dataclass
class FitConfig(DictConfig):
    """What a batch `fit` (engine/trainers/base.py) reads besides the loss: the part of TrainConfig and
    GRPOConfig that `tui-align train` and `replay` set; each field is one option of those commands."""

    batch_size: int = 4  # rows per forward pass (per device); a GRPO row is a whole group
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int = 0  # the learning rate rises linearly over this many optimizer steps
    save_steps: int | None = None  # write output/checkpoint-N every N optimizer steps
    eval_steps: int | None = None  # evaluate the held-out rows (train grpo: prompts) every N optimizer steps, and at the end
    shuffle: bool = True  # reshuffle the rows every epoch (off: file order, as TRL's "sequential")


@dataclass
class TrainConfig(FitConfig):
    """Batch defaults (`tui-align train`, `replay`); each field is one option of those commands."""

    lr: float = 1e-4
    beta: float = 0.1  # DPO and KTO temperature: how far the policy may move from the reference
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # DPO loss terms (LOSS_TERMS), as TRL's list
    loss_weights: list[float] | None = None  # one weight per loss_type term; None: 1.0 each
    label_smoothing: float = 0.0  # sigmoid: cDPO; robust: the flip rate; exo_pair: epsilon; aot, aot_unpaired
    discopop_tau: float = 0.05  # DiscoPOP's temperature
    desirable_weight: float = 1.0  # KTO: weight of a desirable reply's loss (TRL's desirable_weight)
    undesirable_weight: float = 1.0  # KTO: weight of an undesirable reply's loss
    max_length: int | None = 1024
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):  # a name or a comma-separated string becomes the list; the weights are filled in
        self.loss_type, self.loss_weights = loss_terms(self.loss_type, self.loss_weights,
                                                       label_smoothing=self.label_smoothing)


@dataclass
class GRPOConfig(FitConfig):
    """GRPO (`tui-align train grpo`, the live `grpo` update, and `replay --method grpo`, which also sets
    FitConfig's fields); each field is one option of `train grpo`."""

    lr: float = 1e-4
    # Weight of the k3 KL to the reference (the adapter disabled). TRL 1.16 defaults to 0 (no
    # reference); we keep DeepSeekMath's 0.04: a live update on a few scored groups drifts without it.
    beta: float = 0.04
    epsilon: float = 0.2  # the probability ratio is clipped to [1 - epsilon, 1 + epsilon_high]
    epsilon_high: float | None = None  # None: epsilon
    use_bias_correction_kl: bool = True  # the KL term times the ratio (TRL 1.16's default): an unbiased KL gradient
    loss_type: str = "dapo"  # how per-token losses are averaged: dapo (TRL 1.16's default) or grpo
    scale_rewards: bool = True  # divide by the group's std (TRL's scale_rewards="group"); False: only centre
    num_generations: int = 4  # completions sampled per prompt: one group (headless)
    prompts_per_step: int = 2  # prompts (groups) per optimizer step, over all processes (headless)
    max_new_tokens: int = 64
    temperature: float = 1.0  # sampling only: the objective scores tokens at temperature 1
    top_p: float = 1.0
    max_length: int | None = 1024
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class LiveTraining:
    """What one live update does unless the session overrides it (DESIGN.md, "The live loop").

    DPO on a handful of pairs drifts unless the chosen reply's NLL is added (weight 1.0: what RPO's
    rpo_alpha 1.0 was); few optimizer steps per update, at a higher learning rate than batch training.
    """

    lr: float = 2e-4
    # A dpo update's, in its one step: as far as two steps at 4e-4 go (Adam). Over 18 judge cells it won as often
    # (83.2% against 83.3%) and the person waited 37% less (bench/RESULTS.md, "one step at 8e-4").
    dpo_lr: float = 8e-4
    beta: float = 0.1  # kto's; dpo has its own below
    # A dpo update's: at 0.05 a pair's sigmoid saturates later, so each pick teaches more; the 35-cell judge
    # table rose from 81.7% to 85.7% at no cost in time (bench/RESULTS.md, "beta 0.05", issue 12).
    dpo_beta: float = 0.05
    # The NLL past the prefix a pair's replies share (sft_suffix), not over the whole chosen reply (sft): an
    # edited question was learnt on 4 seeds of 5, against 2 (bench/RESULTS.md, "an edit's own words", issue 12).
    loss_type: tuple[str, ...] = ("sigmoid", SFT_SUFFIX_TERM)
    loss_weights: tuple[float, ...] = (1.0, 1.0)
    steps: int = 1  # optimizer steps per update, dpo's too (see dpo_lr): updates are most of a person's wait
    max_length: int = 512
    # Pairs (dpo) or demonstrations (sft) per forward pass of a step (engine.trainers.base.Step): a
    # 12-pair step in parts of 2 peaks at 2.9 GB instead of 10.6, in the same time (bench/RESULTS.md).
    batch_size: int = 2

    def for_method(self, method: str) -> dict:
        """The trainer-config fields each method's live update starts from (`steps` apart)."""
        keys = {"dpo": ("lr", "beta", "loss_type", "loss_weights", "max_length", "batch_size"),
                "sft": ("lr", "max_length", "batch_size"),
                "ppo": ("max_length",), "kto": ("lr", "beta", "max_length"), "grpo": ("lr", "max_length")}[method]
        own = {"lr": self.dpo_lr, "beta": self.dpo_beta} if method == "dpo" else {}
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in ((key, own.get(key, getattr(self, key))) for key in keys)}


LIVE_TRAINING = LiveTraining()


# Requests ---------------------------------------------------------------------------


@dataclass
class Hello:
    token: str | None = None  # required on TCP: the content of --token-file


@dataclass
class Generate:
    messages: list[dict] = field(default_factory=list)  # [{role, content}]
    n: int = 2
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    version: int | None = None  # sample with this saved version's adapter (the live one stays); null: the live one


@dataclass
class ScoreReference:
    examples: list[dict] = field(default_factory=list)  # preference rows {prompt, chosen, rejected}


@dataclass
class Update:
    method: str = ""  # one of METHODS; "" = the engine's --method
    examples: list[dict] = field(default_factory=list)
    hyperparameters: dict = field(default_factory=dict)


@dataclass
class Versions:
    pass


@dataclass
class Rollback:
    version: int = 0


@dataclass
class Save:
    path: str = ""
    merge: bool = False


@dataclass
class Status:
    pass


@dataclass
class Cancel:
    target: str = ""  # id of the request to cancel; "" = every generate of this client


@dataclass
class Shutdown:
    pass


REQUESTS: dict[str, type] = {
    "hello": Hello, "generate": Generate, "score_reference": ScoreReference, "update": Update,
    "versions": Versions, "rollback": Rollback, "save": Save, "status": Status,
    "cancel": Cancel, "shutdown": Shutdown,
}
EVENTS = ("token", "progress", "done", "error")
# A candidate's finish_reason: its end-of-sequence token, max_new_tokens reached, or stopped before either.
FINISHED, CUT_OFF, CANCELLED = "stop", "length", "cancelled"


def encode(type_: str, id_: str, **payload: Any) -> bytes:
    """One message as a JSON line."""
    return (json.dumps({"type": type_, "id": id_, "v": PROTOCOL_VERSION, **payload}, default=_jsonable) + "\n").encode()


def encode_request(id_: str, request) -> bytes:
    name = next(k for k, v in REQUESTS.items() if isinstance(request, v))
    return encode(name, id_, **asdict(request))


def decode(line: bytes | str) -> dict:
    """Parse one line into a dict with at least type, id and v."""
    try:
        message = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    except RecursionError:  # the parser recurses per level: thousands of `[` exhaust Python's stack
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    if _too_deep(message):
        raise ProtocolError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    if not isinstance(message.get("type"), str):
        raise ProtocolError("missing 'type'")
    message.setdefault("id", "")
    return message


def _too_deep(value) -> bool:
    """Are arrays and objects nested more than MAX_DEPTH levels in `value`? (Iterative: no recursion.)"""
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [v for c in level if isinstance(c, (list, dict)) for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return False
    return any(isinstance(c, (list, dict)) for c in level)


def parse_request(message: dict):
    """The request dataclass for a decoded message; unknown fields are refused."""
    kind = REQUESTS.get(message["type"])
    if kind is None:
        raise ProtocolError(f"unknown request type {message['type']!r}")
    if message.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {message.get('v')} not supported (engine speaks {PROTOCOL_VERSION})")
    known = {f.name for f in fields(kind)}
    payload = {k: v for k, v in message.items() if k not in ("type", "id", "v")}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise ProtocolError(f"{message['type']}: unknown field(s) {', '.join(unknown)}")
    for f in fields(kind):
        if f.name in payload and not _fits(payload[f.name], f.type):
            raise ProtocolError(f"{message['type']}: {f.name} must be {f.type}, got {json.dumps(payload[f.name])[:60]}")
    return kind(**payload)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,), "None": (type(None),)}


def _fits(value, annotation: str) -> bool:
    """Does a JSON value fit a field annotation such as "int | None" or "list[dict]"?"""
    for option in annotation.split("|"):
        option = option.strip()
        if option.startswith("list"):
            inner = option[5:-1] if "[" in option else ""
            if isinstance(value, list) and all(_fits(v, inner) for v in value) if inner else isinstance(value, list):
                return True
            continue
        allowed = _TYPES.get(option, (object,))
        if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
            return True
    return False


def _jsonable(value):
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
