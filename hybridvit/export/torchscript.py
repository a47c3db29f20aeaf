"""TorchScript export by `torch.jit.trace`; the batch dimension stays symbolic in traced graphs,
shape-dependent Python branches are baked in (checked the same way as ONNX)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..checkpoint import one_line


def export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        try:
            torch.jit.save(traced, str(path))
        except RuntimeError as err:  # the zip writer reports a full disk or a bad path as RuntimeError
            raise OSError(one_line(err)) from None
        return load_torchscript(path)


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        return torch.jit.load(str(path))


def torchscript_max_error(model: torch.nn.Module, traced: torch.nn.Module, inputs: list[torch.Tensor]) -> float:
    """Largest |traced - eager| over `inputs`, relative to max(1, |eager|max); inf if the trace fails or
    either output is not finite."""
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            expected = model(x)
            try:
                got = traced(x)
            except RuntimeError:
                return float("inf")
            if got.shape != expected.shape or not (torch.isfinite(got).all() and torch.isfinite(expected).all()):
                return float("inf")  # a NaN would compare as no error at all
            worst = max(worst, (got - expected).abs().max().item() / max(1.0, expected.abs().max().item()))
    return worst
