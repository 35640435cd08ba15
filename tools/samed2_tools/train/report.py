"""The run's metrics: averaged per logging interval, written to metrics.csv and plotted to metrics.png."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

from samed2.files import atomic_write

TRAIN_COLUMNS = ("loss", "dice", "focal", "iou", "score", "train_dice", "track_dice")


class MetricsLog:
    """Rows of metrics keyed by step; interval statistics are means over the steps since the last row."""

    def __init__(self, values: list[int], rows: list | None = None):
        self.columns = (["step", "epoch", "lr", *TRAIN_COLUMNS, "slices_per_s", "val_dice"]
                        + [f"val_dice_{v}" for v in values])
        self.rows = list(rows or [])
        self._pending = defaultdict(list)

    def add_step(self, stats: dict) -> None:
        for name in TRAIN_COLUMNS:
            self._pending[name].append(stats.get(name, math.nan))

    def row(self, step: int, epoch: int, lr: float, slices_per_s: float, validation: dict | None = None) -> dict:
        """Close the interval: one row with the means since the last row, plus any validation figures."""
        row = {"step": step, "epoch": epoch, "lr": lr, "slices_per_s": slices_per_s}
        row.update({name: _mean(values) for name, values in self._pending.items()})
        row.update(validation or {})
        self._pending.clear()
        self.rows.append({column: row.get(column, math.nan) for column in self.columns})
        return self.rows[-1]

    def write(self, run_dir: Path) -> None:
        """metrics.csv and metrics.png in the run folder, each replaced atomically."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in self.rows)
        data = text.getvalue().encode("utf-8")
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(run_dir) / "metrics.csv", lambda stream: stream.write(data))
        atomic_write(Path(run_dir) / "metrics.png", self._plot)

    def _plot(self, stream) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        figure = Figure(figsize=(9, 3.5), dpi=100)
        loss_axes, dice_axes = figure.subplots(1, 2)
        steps = [row["step"] for row in self.rows]
        loss_axes.plot(steps, [row["loss"] for row in self.rows], label="training loss")
        loss_axes.set(xlabel="step", ylabel="loss", title="Loss")
        dice_axes.plot(steps, [row["train_dice"] for row in self.rows], label="training Dice, prompted")
        dice_axes.plot(steps, [row["track_dice"] for row in self.rows], label="training Dice, tracked")
        validated = [row for row in self.rows if not math.isnan(row["val_dice"])]
        dice_axes.plot([r["step"] for r in validated], [r["val_dice"] for r in validated], "o-",
                       label="validation Dice")
        dice_axes.set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="Dice")
        dice_axes.legend(loc="lower right")
        figure.tight_layout()
        figure.savefig(stream, format="png")


def _mean(values: list) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _cell(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
