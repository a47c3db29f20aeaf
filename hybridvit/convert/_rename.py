"""Key renaming by ordered regex rules, shared by the converters."""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

RenameRule = tuple[str, str | Callable[[re.Match], str]]


def rename_keys(state_dict: dict[str, torch.Tensor], rules: Sequence[RenameRule]) -> dict[str, torch.Tensor]:
    """Apply every (pattern, replacement) rule in order to each key; tensors are kept as they are."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out
