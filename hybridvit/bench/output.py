"""Writers for bench results: terminal/markdown table, CSV, JSON and PNG plots vs resolution."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import atomic_write
from .report import format_table
from .runner import COLUMNS, BenchRow

_TABLE_COLUMNS = {
    "model": "model", "res": "res", "batch": "batch", "params_m": "params (M)", "gmacs": "GMACs",
    "gmacs_no_attn": "GMACs w/o attn", "latency_ms": "latency ms (median)", "latency_p90_ms": "p90 ms",
    "throughput_img_s": "img/s", "peak_mem_mb": "peak mem (MiB)", "note": "note",
}


def rows_table(rows: Sequence[BenchRow], markdown: bool = False) -> str:
    data = [[getattr(r, key) for key in _TABLE_COLUMNS] for r in rows]
    if not any(r.note for r in rows):
        data = [d[:-1] for d in data]
    headers = list(_TABLE_COLUMNS.values())[: len(data[0]) if data else None]
    return format_table(headers, data, markdown=markdown)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment() -> dict:
    """What the numbers were measured on."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "torch": torch.__version__,
        "cpu": f"{_cpu_name()} ({os.cpu_count()} logical cores)",
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_results(rows: Sequence[BenchRow], out_dir: str | Path, markdown: bool = False) -> dict[str, Path]:
    """Write results.csv, results.json, latency.png, memory.png (and table.md) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json"}

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(r.as_dict() for r in rows)
    _write_text(paths["csv"], buf.getvalue())

    payload = {"environment": environment(), "columns": list(COLUMNS), "rows": [r.as_dict() for r in rows]}
    _write_text(paths["json"], json.dumps(payload, indent=1))

    paths["latency_png"] = _plot(rows, "latency_ms", "latency, median (ms)", out / "latency.png")
    paths["memory_png"] = _plot(rows, "peak_mem_mb", "peak memory (MiB)", out / "memory.png")
    if markdown:
        paths["markdown"] = out / "table.md"
        env = payload["environment"]
        device = env["cuda"] if rows and rows[0].device == "cuda" else env["cpu"]
        header = (f"Measured {env['date']} on {device}, torch {env['torch']}, {env['threads']} thread(s); "
                  "latency = median of alternating rounds; GMACs per image.\n\n")
        _write_text(paths["markdown"], header + rows_table(rows, markdown=True) + "\n")
    return paths


def _plot(rows: Sequence[BenchRow], key: str, label: str, path: Path) -> Path:
    """One panel per batch size: `key` against resolution, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r.batch for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches) + 2.5, 4.5), squeeze=False)
    models = list(dict.fromkeys(r.model for r in rows))
    colors = plt.cm.tab20.colors
    for ax, batch in zip(axes[0], batches):
        for i, model in enumerate(models):
            points = sorted((r.res, getattr(r, key)) for r in rows
                            if r.model == model and r.batch == batch and getattr(r, key) is not None)
            if points:
                ours = _source_of(rows, model) == "hybridvit"
                ax.plot(*zip(*points), marker="o", label=model, color=colors[i % len(colors)],
                        linestyle="-" if ours else "--")
        ax.set(title=f"batch {batch} (solid: hybridvit, dashed: timm)", xlabel="input resolution (px)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _source_of(rows: Sequence[BenchRow], model: str) -> str:
    return next(r.source for r in rows if r.model == model)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
