"""Safe weight loading and atomic saving (safetensors, or torch.load with weights_only=True)."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError, OutputError

# Keys under which training scripts nest the weights, most specific first.
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file; unwrap common nesting and `module.` prefixes."""
    path = Path(path)
    if path.is_dir() and (path / "run.json").is_file():  # a training output directory: its best, else last weights
        from .engine.checkpointing import run_weights

        path = run_weights(path, "best") if run_weights(path, "best").is_file() else run_weights(path, "last")
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
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not a weights file ({one_line(err)})") from None
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
    _load_checked(model, state, path, strict)


def _load_checked(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, strict: bool,
    may_miss: Collection[str] = (), note: str = "",
) -> None:
    """`load_state_dict`, after a check that names what does not fit; keys in `may_miss` keep the model's values."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and k not in may_miss]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if wrong_shape or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"checkpoint {path}{note} does not fit model {_model_name(model)}: "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:2]}), {len(wrong_shape)} shape mismatches (e.g. {wrong_shape[:2]})"
        )
    model.load_state_dict(state, strict=strict and not may_miss)


def _model_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    return (cfg.get("architecture") if isinstance(cfg, Mapping) else None) or type(model).__name__


KNOWN_LAYOUTS = "hybridvit/timm, ml-cvnets MobileViT, official CeiT, pytorch-boat Swin/CSWin, timm GhostNet"


@dataclass
class InitReport:
    """What `load_pretrained` did: the file read and whether the classifier was replaced."""

    path: Path
    head_classes: tuple[int, int] | None = None  # (checkpoint's, model's) class counts when the head is new
    trained_model: str | None = None  # the model named in the run directory's run.json, if any

    def summary(self) -> str:
        origin = f" ({self.trained_model} run)" if self.trained_model else ""
        if self.head_classes is None:
            return f"initialised from {self.path}{origin}: every weight loaded, classifier included"
        old, new = self.head_classes
        if new == 0:
            head = f"its {old}-class classifier left out (the model has none)"
        else:
            head = f"new {new}-class classifier head (" + (f"the checkpoint's has {old})" if old else "the checkpoint has none)")
        return f"initialised from {self.path}{origin}: every weight loaded except the classifier, {head}"


def load_pretrained(model: torch.nn.Module, path: str | os.PathLike) -> InitReport:
    """Initialise `model` from weights for fine-tuning, or as a detection/segmentation backbone.

    `path` is a weights file in any layout `hybridvit.convert` knows (ours = timm's MobileViT/GhostNet,
    ml-cvnets MobileViT, official CeiT, pytorch-boat BOAT-Swin/CSWin; nested `model`/`state_dict`/EMA
    entries and `module.` prefixes are unwrapped), or a `hybridvit train` output directory (its
    best weights, else its last). Size-dependent tensors follow the model: CeiT's `pos_embed` is resampled to the
    model's token grid as the official fine-tuning code does (create the model at the new size, or
    call `set_input_size` first). The classifier (`model.get_classifier()`) is kept when its shapes
    match and replaced by the model's own fresh one when the class count differs or the checkpoint has
    none; every other tensor must be present with the right shape, else a one-line CheckpointError.
    `--resume` is different: it restores a whole run (optimizer, schedule, RNG), not just weights.
    """
    from .convert import convert_state_dict

    path = Path(path)
    trained = None
    if path.is_dir():
        if not (path / "run.json").is_file():
            raise CheckpointError(f"{path} is a directory without run.json: not a hybridvit training output directory")
        trained = json.loads((path / "run.json").read_text()).get("model")
    state = convert_state_dict(model, read_state_dict(path))  # a run directory: its best, else last weights
    head_keys, head_prefix = classifier_keys(model)
    own = model.state_dict()
    in_ckpt = [k for k in state if head_prefix and k.startswith(head_prefix)]
    head_fits = bool(head_keys) and set(in_ckpt) == head_keys and all(state[k].shape == own[k].shape for k in head_keys)
    report = InitReport(path, trained_model=trained)
    if not head_fits and (in_ckpt or head_keys):
        weight = state.get(f"{head_prefix}weight")
        report.head_classes = (weight.shape[0] if weight is not None else 0, getattr(model, "num_classes", 0))
        state = {k: v for k, v in state.items() if k not in in_ckpt}
    note = f" ({trained} run)" if trained else ""
    if not (set(own) - head_keys) & set(state):
        raise CheckpointError(
            f"checkpoint {path}{note} shares no weights with model {_model_name(model)}; layouts hybridvit reads: "
            f"{KNOWN_LAYOUTS}"
        )
    _load_checked(model, state, path, strict=True, may_miss=head_keys if report.head_classes else (), note=note)
    return report


def classifier_keys(model: torch.nn.Module) -> tuple[set[str], str]:
    """State-dict keys of `model.get_classifier()` and their prefix (e.g. 'head.fc.'); empty without one."""
    get = getattr(model, "get_classifier", None)
    classifier = get() if callable(get) else None
    if classifier is None:
        return set(), ""
    for name, module in model.named_modules():
        if module is classifier:
            prefix = f"{name}."
            return {prefix + k for k in classifier.state_dict()}, prefix
    return set(), ""


def one_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, without ANSI colour codes, at most `limit` characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike, write: Callable[[str], None], shown: str | os.PathLike | None = None) -> None:
    """Call `write(path)`, then fsync the file and give it the usual permissions (0666 less the umask).

    An I/O failure (a full disk, a read-only directory) becomes an OutputError naming `shown` (default `path`).
    """
    shown = shown or path
    try:
        write(str(path))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(path, 0o666 & ~_umask())
    except OSError as err:
        raise OutputError(f"cannot write {shown}: {_reason(err)}") from None
    except (RuntimeError, SafetensorError) as err:  # torch.save and safetensors wrap I/O errors (ENOSPC, EFBIG)
        raise OutputError(f"cannot write {shown}: {one_line(err)}") from None


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else one_line(err)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync, then rename onto `path`: a crash never leaves a half-written file.

    A failed write leaves `path` as it was and removes the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {_reason(err)}") from None
    os.close(fd)
    try:
        write_synced(tmp, write, shown=path)
        try:
            os.replace(tmp, path)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {_reason(err)}") from None
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Save weights as safetensors, atomically."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
