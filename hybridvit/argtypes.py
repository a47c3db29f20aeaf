"""argparse `type=` helpers shared by every verb: a value out of range is a one-line error (exit code 2).

Each helper raises `argparse.ArgumentTypeError`; the CLI's parser prints it as
`hybridvit <verb>: error: argument --flag: <message>` on one line.
"""
from __future__ import annotations

import argparse
import math

import torch


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value < 2**31:  # numpy seeds must be in [0, 2**32); each rank adds its rank
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31), got {value}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


def unit_interval(text: str) -> float:
    """A number in [0, 1), e.g. an EMA decay."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value:g}")
    return value


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. `24,32,40`."""
    try:
        return tuple(positive_int(v) for v in text.split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 24,32,40 ({err})") from None


def device(text: str) -> str:
    """A torch device that exists here: cpu, cuda, cuda:N (N below the GPU count), mps."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device '{text}'; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"'{text}' asked for, but no CUDA GPU is available here; use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"'{text}' asked for, but only {count} CUDA GPU(s) exist here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"'{text}' asked for, but MPS is not available here; use cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device '{text}'; use cpu, cuda or cuda:N")
    return text
