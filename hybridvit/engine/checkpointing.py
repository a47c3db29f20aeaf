"""Training checkpoints: each save commits one complete set at once, so a kill or a full disk at
any instant leaves the previous complete checkpoint in place.

An output directory holds
- `run.json`: the run's configuration (model, classes, input size, normalisation, recipe, seed,
  world size, data, the `train` flags), for `eval`, `predict`, `export RUN_DIR` and the resume checks;
- `checkpoints/step-000000123/`: one checkpoint set, all from the same optimizer step:
  `last.safetensors` (model), `last_ema.safetensors` (EMA, if used) and `state.pt` (optimizer,
  scheduler, AMP scaler, RNG states of every rank, the sampler's epoch and step within it, the
  running sums of the epoch);
- `checkpoints/LATEST`: the name of the committed step directory. Every file of a set is written
  and fsynced into a fresh step directory first; only then is LATEST replaced atomically (write a
  temporary file, fsync, `os.replace`, fsync the directory). Readers go only through LATEST. Step
  directories it does not name (older, or half-written by a crash) and stale `.tmp` files are
  removed after it moved;
- `best.safetensors`: the evaluated weights with the best validation top-1, replaced atomically
  before the checkpoint of its epoch commits (a resume that repeats the epoch rewrites the same weights);
- `metrics.csv`: one row per epoch; on resume the rows after the checkpoint's epoch are dropped.
timm saves no RNG state; without it a resume is not exact (GUIDE pitfalls).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..checkpoint import atomic_write, fsync_dir, one_line, write_synced
from ..errors import CheckpointError, OutputError
from .metrics import CURVES, METRICS

WEIGHTS = "last.safetensors"
EMA_WEIGHTS = "last_ema.safetensors"
BEST_WEIGHTS = "best.safetensors"
STATE = "state.pt"
RUN_INFO = "run.json"
CHECKPOINTS = "checkpoints"
POINTER = "LATEST"
STEP_PREFIX = "step-"


def tagged_weights_writer(state: dict[str, torch.Tensor], step: int) -> Callable[[str], None]:
    """A writer of safetensors weights whose metadata records the global step they belong to."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    return lambda path: save_file(tensors, path, metadata={"global_step": str(step)})


def save_tagged_weights(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    atomic_write(path, tagged_weights_writer(state, step))


def weights_step(path: Path) -> int | None:
    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("global_step")
    return None if step is None else int(step)


def latest_dir(directory: Path) -> Path | None:
    """The committed checkpoint set named by `checkpoints/LATEST`, or None before the first commit."""
    pointer = Path(directory) / CHECKPOINTS / POINTER
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    target = pointer.parent / name
    if not name.startswith(STEP_PREFIX) or "/" in name or not target.is_dir():
        raise CheckpointError(f"checkpoint pointer {pointer} names '{name[:60]}', which is not a checkpoint directory")
    return target


def commit_checkpoint(directory: Path, step: int, writers: dict[str, Callable[[str], None]]) -> Path:
    """Write `writers` (file name -> writer of that file) as one checkpoint set, then move LATEST to it."""
    root = Path(directory) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    current = latest_dir(directory)
    name = f"{STEP_PREFIX}{step:09d}"
    if current is not None and current.name == name:  # the same step saved again: never touch the committed set
        name = f"{name}.{time.time_ns()}"
    target = root / name
    if target.exists():  # half-written by an earlier crash at this step
        shutil.rmtree(target)
    target.mkdir()
    for file_name, write in writers.items():
        write_synced(target / file_name, write)
    fsync_dir(target)
    fsync_dir(root)
    atomic_write(root / POINTER, lambda tmp: Path(tmp).write_text(name + "\n"))
    remove_stale(directory, keep=target)
    return target


def remove_stale(directory: Path, keep: Path) -> None:
    """Delete step directories other than `keep` and temporary files left by a crash."""
    root = Path(directory) / CHECKPOINTS
    for entry in root.iterdir():
        if entry.is_dir() and entry != keep and entry.name.startswith(STEP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
    for folder in (root, Path(directory)):
        for entry in folder.glob(".*.tmp"):
            entry.unlink(missing_ok=True)


def capture_rng() -> dict[str, Any]:
    """RNG states of this process as tensors and plain Python values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# What a run writes into its output directory; `--overwrite` removes exactly these, nothing else there.
RUN_FILES = (RUN_INFO, CHECKPOINTS, BEST_WEIGHTS, METRICS, CURVES, "tensorboard")


def holds_run(directory: Path) -> bool:
    return any((Path(directory) / name).exists() for name in RUN_FILES)


def start_run(directory: Path, info: dict[str, Any], replace: bool = False) -> None:
    """Create the output directory (removing a previous run's files if `replace`) and write run.json."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES if replace else ():
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    except OSError as err:
        raise OutputError(f"cannot write the output directory {directory}: {err.strerror or one_line(err)}") from None
    write_json(directory / RUN_INFO, info)


def read_run_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / RUN_INFO
    if not path.is_file():
        raise CheckpointError(f"no {RUN_INFO} in {directory}: not a hybridvit training output directory")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: it is corrupt ({one_line(err)})") from None
    if not isinstance(info, dict) or not isinstance(info.get("model"), str):
        raise CheckpointError(f"{path} is not a hybridvit run description: it names no model")
    return info


def state_writer(state: dict[str, Any]) -> Callable[[str], None]:
    return lambda path: torch.save(state, path)


# Keys every state.pt has; a state without them was not written by this trainer.
STATE_KEYS = ("global_step", "epoch", "step_in_epoch", "best_score", "running", "optimizer", "scheduler", "scaler", "rng")


def load_state(directory: Path) -> tuple[dict[str, Any], Path]:
    """The committed training state and its step directory, checked against the step recorded in the weights."""
    folder = latest_dir(directory)
    if folder is None:
        raise CheckpointError(f"cannot resume: {directory} holds no complete checkpoint yet (no {CHECKPOINTS}/{POINTER})")
    path = folder / STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: checkpoint {folder} has no {STATE}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... for foreign or corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not a hybridvit state ({one_line(err)})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a hybridvit training state: it lacks {', '.join(missing)}")
    for name in (WEIGHTS, EMA_WEIGHTS):
        weights = folder / name
        if weights.is_file() and read_weights_step(weights) != state["global_step"]:
            raise CheckpointError(f"checkpoint in {folder} is inconsistent: {name} is not from step {state['global_step']}")
    return state, folder


def read_weights_step(path: Path) -> int | None:
    try:
        return weights_step(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt ({one_line(err)})") from None


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path.parent} has no {path.name}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt ({one_line(err)})") from None


def run_weights(directory: Path, which: str) -> Path:
    """The weights file of a run directory: `best`, or the committed `last` / `ema` (through LATEST)."""
    directory = Path(directory)
    if which == "best":
        return directory / BEST_WEIGHTS
    folder = latest_dir(directory)
    if folder is None:
        raise CheckpointError(f"{directory} holds no complete checkpoint yet (no {CHECKPOINTS}/{POINTER})")
    return folder / (EMA_WEIGHTS if which == "ema" else WEIGHTS)
