"""Per-epoch metrics: a CSV file, TensorBoard scalars when `tensorboard` is installed, and a PNG of the curves."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..checkpoint import atomic_write

METRICS = "metrics.csv"
CURVES = "curves.png"


class MetricsLogger:
    """Appends one row of `fields` per epoch to `metrics.csv` and mirrors it to TensorBoard.

    `fields` start with epoch, step; the task's columns follow (engine/train.py `Trainer.metric_fields`).
    A new run starts the file afresh; a resumed one (`epochs_done` = the checkpoint's epoch) keeps the
    complete rows up to that epoch and drops later or torn ones, which a kill after the row was
    appended but before its checkpoint committed leaves behind.
    """

    def __init__(self, directory: Path, fields: tuple[str, ...], epochs_done: int | None = None) -> None:
        self.path = directory / METRICS
        self.fields = fields
        rows = _complete_rows(self.path, epochs_done, len(fields)) if epochs_done is not None and self.path.is_file() else []
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(fields)
        writer.writerows(rows)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text.getvalue()))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:
            self.writer = None

    def log(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in self.fields])
        if self.writer is not None:
            for key in self.fields[2:]:
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _complete_rows(path: Path, epochs_done: int, num_fields: int) -> list[list[str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    kept = []
    for row in rows:
        try:
            values = [float(v) for v in row]
        except ValueError:  # a row torn by a kill
            continue
        if len(values) == num_fields and values[0] <= epochs_done:
            kept.append(row)
    return kept


def read_metrics(directory: Path) -> list[dict[str, float]]:
    with (directory / METRICS).open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(directory: Path, metrics: tuple[str, ...] = ("top1",)) -> Path:
    """Losses and the `metrics` (train_ and val_ columns where present) against epoch, from `metrics.csv`, to `curves.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(directory)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train (recipe's loss)")
    if "val_loss" in rows[0]:
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val (cross-entropy)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for metric in metrics:
        for split in ("train", "val"):
            if f"{split}_{metric}" in rows[0]:
                label = split if len(metrics) == 1 else f"{split} {metric}"
                ax_acc.plot(epochs, [r[f"{split}_{metric}"] for r in rows], label=label)
    title = "accuracy" if metrics == ("top1",) else "validation"
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)" if metrics == ("top1",) else ", ".join(metrics), title=title)
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
