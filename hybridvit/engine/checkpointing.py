"""Training checkpoints: safetensors weights plus a small torch state file, all written atomically.

An output directory holds
- `last.safetensors` (model) and `last_ema.safetensors` (EMA, if used), tagged with the global step;
- `state.pt`: optimizer, scheduler, AMP scaler, RNG states of every rank (torch, numpy, python),
  the sampler's epoch and step within the epoch, and the running sums of the epoch;
- `run.json`: model name, classes, input size and normalisation, for `eval` and `predict`;
- `best.safetensors`: the weights with the best validation top-1.
timm saves no RNG state; without it a resume is not exact (GUIDE pitfalls).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checkpoint import atomic_write
from ..errors import CheckpointError

WEIGHTS = "last.safetensors"
EMA_WEIGHTS = "last_ema.safetensors"
BEST_WEIGHTS = "best.safetensors"
STATE = "state.pt"
RUN_INFO = "run.json"


def save_tagged_weights(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    """Safetensors weights whose metadata records the global step they belong to."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"global_step": str(step)}))


def weights_step(path: Path) -> int | None:
    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("global_step")
    return None if step is None else int(step)


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


def read_run_info(directory: Path) -> dict[str, Any]:
    path = directory / RUN_INFO
    if not path.is_file():
        raise CheckpointError(f"no {RUN_INFO} in {directory}: not a hybridvit training output directory")
    return json.loads(path.read_text())


def save_state(directory: Path, state: dict[str, Any]) -> None:
    atomic_write(directory / STATE, lambda tmp: torch.save(state, tmp))


def load_state(directory: Path) -> dict[str, Any]:
    """The training state, checked against the step recorded in the weight files."""
    path = directory / STATE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    for name in (WEIGHTS, EMA_WEIGHTS):
        weights = directory / name
        if weights.is_file() and weights_step(weights) != state["global_step"]:
            raise CheckpointError(f"checkpoint in {directory} is inconsistent: {name} is not from step {state['global_step']}")
    return state
