"""Per-epoch metrics: a CSV file, TensorBoard scalars when `tensorboard` is installed, and a PNG of the curves."""
from __future__ import annotations

import csv
from pathlib import Path

METRICS = "metrics.csv"
CURVES = "curves.png"
FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "epoch_seconds")


class MetricsLogger:
    """Appends one row per epoch to `metrics.csv` (kept across resumes) and mirrors it to TensorBoard."""

    def __init__(self, directory: Path, resume: bool) -> None:
        self.path = directory / METRICS
        if not resume or not self.path.is_file():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:
            self.writer = None

    def log(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in FIELDS])
        if self.writer is not None:
            for key in FIELDS[2:]:
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(directory: Path) -> list[dict[str, float]]:
    with (directory / METRICS).open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(directory: Path) -> Path:
    """Loss and top-1 against epoch, from `metrics.csv`, to `curves.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(directory)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train (recipe's loss)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="val (cross-entropy)")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [r["train_top1"] for r in rows], label="train")
    ax_acc.plot(epochs, [r["val_top1"] for r in rows], label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = directory / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
