"""Safe weight loading and atomic saving (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

# Keys under which training scripts nest the weights, most specific first.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file; unwrap common nesting and `module.` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            # DeiT-style training checkpoints (CeiT's official ones) also pickle the argparse `args`.
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not a weights file ({err})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    keys = _NESTED_KEYS if prefer_ema else _NESTED_KEYS[2:]
    for key in keys:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    converter: Callable[[dict], dict] | None = None,
    strict: bool = True,
) -> None:
    """Load weights into `model`, optionally through a layout converter; mismatches raise CheckpointError."""
    state = read_state_dict(path)
    if converter is not None:
        state = converter(state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        name = getattr(getattr(model, "pretrained_cfg", {}), "get", lambda *_: None)("architecture")
        raise CheckpointError(
            f"checkpoint {path} does not fit model {name or type(model).__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:2]}), {len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:2]})"
        )
    model.load_state_dict(state, strict=strict)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` then rename onto `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save weights as safetensors, atomically."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
