"""Sparklines over updates (loss; reward margin and accuracy for DPO; mean score and KL for PPO; reward
margin and KL for KTO) and counts."""

from __future__ import annotations

from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

# (metric key, label) per method; keys are what the engine's trainers report.
SERIES = {
    "dpo": [("loss", "loss"), ("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")],
    "sft": [("loss", "loss")],
    "ppo": [("loss", "loss"), ("score/mean", "mean score"), ("kl", "KL")],
    "kto": [("loss", "loss"), ("rewards/margins", "reward margin"), ("kl", "KL")],
    "grpo": [("loss", "loss"), ("score", "mean score"), ("kl", "KL")],
}


def metric_series(history: list[dict], key: str) -> list[float]:
    """Values of one metric over updates; rows are flat or keep them under 'metrics'."""
    values = []
    for row in history:
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else row
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            values.append(float(value))
    return values


class MetricsPanel(Vertical):
    """Hidden until `m`; the app calls `show_metrics` after each update."""

    def __init__(self, method: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.method = method
        self.border_title = "metrics"

    def compose(self):
        for key, label in SERIES.get(self.method, SERIES["dpo"]):
            yield Label(label, id=f"label-{_css_id(key)}", classes="metric-label")
            yield Sparkline([], id=f"spark-{_css_id(key)}", classes="metric-spark")
        yield Static("", id="counts", classes="metric-counts")

    def show_metrics(self, history: list[dict], counts: dict) -> None:
        for key, label in SERIES.get(self.method, SERIES["dpo"]):
            values = metric_series(history, key)
            last = f"{values[-1]:.3f}" if values else "-"
            self.query_one(f"#label-{_css_id(key)}", Label).update(f"{label}: {last}")
            self.query_one(f"#spark-{_css_id(key)}", Sparkline).data = values
        lines = [f"{name}: {value}" for name, value in counts.items()]
        self.query_one("#counts", Static).update("\n".join(lines) or "no feedback yet")


def _css_id(key: str) -> str:
    return key.replace("/", "-").replace(".", "-")
