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


_BACKEND_COLUMNS = {"backend": "back end", "precision": "precision ran", "vs_eager": "latency / eager", "max_err": "max err vs eager"}


def rows_table(rows: Sequence[BenchRow], markdown: bool = False) -> str:
    """The results table; back-end columns (after the batch) only when a back end other than eager ran."""
    columns = dict(_TABLE_COLUMNS)
    if not any(r.note for r in rows):
        del columns["note"]
    if any(r.tokens for r in rows):  # token-mixer rows (bench/mixers.py)
        columns = {"model": "model", "tokens": "tokens", **{k: v for k, v in columns.items() if k != "model"}}
        if all(r.res is None for r in rows):
            del columns["res"]
    if any(r.backend != "eager" for r in rows):
        keys = list(columns)
        at = keys.index("batch") + 1
        columns = {k: columns.get(k) or _BACKEND_COLUMNS[k] for k in keys[:at] + list(_BACKEND_COLUMNS) + keys[at:]}
    data = [[_cell(getattr(r, key), key) for key in columns] for r in rows]
    return format_table(list(columns.values()), data, markdown=markdown)


def _cell(value: object, key: str) -> object:
    """Errors in scientific notation (they span 1e-7 to 1e-1); everything else as format_table does."""
    return f"{value:.1e}" if key == "max_err" and isinstance(value, float) else value


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
    """Write results.csv, results.json, latency.png, memory.png (mixers.png for mixer rows; table.md) into `out_dir`."""
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

    model_rows = [r for r in rows if r.res is not None]
    if model_rows:
        paths["latency_png"] = _plot(model_rows, "latency_ms", "latency, median (ms)", out / "latency.png")
        paths["memory_png"] = _plot(model_rows, "peak_mem_mb", "peak memory (MiB)", out / "memory.png")
    if len(model_rows) < len(rows):
        paths["mixers_png"] = _plot_mixers([r for r in rows if r.res is None], out / "mixers.png")
    if any(r.backend != "eager" for r in rows):
        paths["backends_png"] = _plot_backends(rows, out / "backends.png")
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
    models = list(dict.fromkeys(r.label for r in rows))
    colors = plt.cm.tab20.colors
    for ax, batch in zip(axes[0], batches):
        for i, model in enumerate(models):
            points = sorted((r.res, getattr(r, key)) for r in rows
                            if r.label == model and r.batch == batch and getattr(r, key) is not None)
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


def _plot_mixers(rows: Sequence[BenchRow], path: Path) -> Path:
    """Token mixers alone: latency, peak memory and GMACs against the token count (log-log), one line per
    mixer and batch size, as the XFormer paper's XFA-vs-MHSA figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("latency_ms", "latency, median (ms)"), ("peak_mem_mb", "peak memory (MiB)"), ("gmacs", "GMACs")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    lines = list(dict.fromkeys((r.model, r.batch) for r in rows))
    for ax, (key, label) in zip(axes, panels):
        for i, (mixer, batch) in enumerate(lines):
            points = sorted((r.tokens, getattr(r, key)) for r in rows
                            if (r.model, r.batch) == (mixer, batch) and getattr(r, key) is not None)
            if points:
                name = mixer if len({b for _, b in lines}) == 1 else f"{mixer} (batch {batch})"
                ax.plot(*zip(*points), marker="o", label=name, color=plt.cm.tab10.colors[i % 10])
        ax.set(xscale="log", yscale="log", xlabel="tokens N", ylabel=label, title=label.split(",")[0])
        ax.grid(alpha=0.3, which="both")
    note = rows[0].note if rows else ""
    fig.suptitle(f"token mixers alone ({note.rsplit(', grid', 1)[0]}; {rows[0].device if rows else ''})", fontsize=10)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _plot_backends(rows: Sequence[BenchRow], path: Path) -> Path:
    """Latency relative to eager per (model, resolution, batch), one bar per back end, max error on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys((r.model, r.res, r.batch) for r in rows if r.vs_eager is not None))
    backends = list(dict.fromkeys(r.backend for r in rows if r.vs_eager is not None))
    by_key = {(r.model, r.res, r.batch, r.backend): r for r in rows if r.vs_eager is not None}
    width = 0.8 / max(1, len(backends))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells) * max(1, len(backends)) / 3), 4.8))
    for j, backend in enumerate(backends):
        xs, ys, errs = [], [], []
        for i, (model, res, batch) in enumerate(cells):
            row = by_key.get((model, res, batch, backend))
            if row is not None:
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(row.vs_eager)
                errs.append(row.max_err)
        bars = ax.bar(xs, ys, width, label=backend, color=plt.cm.tab10.colors[j % 10])
        for bar, err in zip(bars, errs):
            if err is not None:
                ax.annotate(f"{err:.0e}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(cells)), [f"{m}\n{r}px, b{b}" for m, r, b in cells], fontsize=7, rotation=20)
    ax.set(ylabel="latency / eager f32 (median)", title="back ends side by side (label: max error vs eager)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _source_of(rows: Sequence[BenchRow], model: str) -> str:
    return next(r.source for r in rows if r.label == model)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
