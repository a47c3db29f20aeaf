"""Registration of hybridvit models with timm, plus the papers' reference numbers per variant."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from timm.models import register_model

from ..errors import UnknownModelError


@dataclass(frozen=True)
class PaperEntry:
    """What the paper (or the reference code, when the paper is silent) reports for one variant."""

    family: str
    input_size: int
    params_m: float | None = None  # parameters in millions, as printed in the paper
    top1: float | None = None  # ImageNet-1k top-1, as printed in the paper
    source: str = ""  # table or file the numbers come from; "not in paper" for our own variants


_ENTRIES: dict[str, PaperEntry] = {}


def register(entry: PaperEntry) -> Callable:
    """Register a model function with timm and record its paper numbers."""

    def wrap(fn: Callable) -> Callable:
        _ENTRIES[fn.__name__] = entry
        return register_model(fn)

    return wrap


def list_models(family: str | None = None) -> list[str]:
    """Names of all hybridvit models (optionally of one family), sorted."""
    return sorted(n for n, e in _ENTRIES.items() if family is None or e.family == family)


def paper_entry(name: str) -> PaperEntry:
    check_model_name(name)
    return _ENTRIES[name]


def check_model_name(name: str) -> None:
    """Raise UnknownModelError naming the closest registered names."""
    if not isinstance(name, str):
        raise UnknownModelError(f"a model name must be a string, not {type(name).__name__}; run `hybridvit models` for the list")
    if name in _ENTRIES:
        return
    close = difflib.get_close_matches(name, list(_ENTRIES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `hybridvit models` for the list"
    raise UnknownModelError(f"unknown model '{name}'{hint}")
