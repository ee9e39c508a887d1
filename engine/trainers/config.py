"""Training hyperparameters: one plain dataclass shared by the trainers and the CLI."""

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainConfig:
    lr: float = 1e-4
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rpo_alpha: float | None = None  # weight of the chosen reply's NLL added to DPO (RPO)
    max_length: int | None = 1024
    batch_size: int = 4
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    save_steps: int | None = None  # fit(): write output/checkpoint-N every N optimizer steps
    shuffle: bool = True  # fit(): reshuffle the rows every epoch (off: file order, as TRL's "sequential")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})
