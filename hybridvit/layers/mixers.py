"""Token mixers as one swappable axis: a table of the attention kinds the families hold, one calling convention.

Convention: `mixer(x, hw)` takes tokens x [B, N, C] and returns [B, N, C]; `hw` = (H, W) is the grid the
N = H * W tokens lie on (None where the tokens have no grid, e.g. with a class token). Each mixer keeps
its own file and paper citation; this file only names them and builds one from a slot's width and heads:

    mhsa  multi-head self-attention (MobileViT, CeiT's encoder)      attention.py   any tokens
    xfa   cross feature attention (XFormer §3.1), linear in N        xfa.py         any tokens
    mosa  mobile self-attention (MoCoViT §3.1), convs on the grid    mosa.py        needs the H x W grid
    fsla  feature-space local attention (BOAT §3.2), clustered       fsla.py        needs the H x W grid

A model's `attn_layer=` (timm's keyword) picks one by name for the slot where its paper put its own
mixer; the paper's choice is the default, built with the paper's options, so the registered models keep
their parameters, outputs and state-dict keys. Not in the table: LCA (CeiT's head; one query, so it does
not map N tokens to N tokens) and the image-space local attention of BOAT (Swin windows, CSWin stripes),
whose q/k/v projections sit in the block itself under the reference's key names.
To add a mixer, add a row to `MIXERS` whose builder returns a module following the convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import UnsupportedOptionError
from .attention import MultiHeadSelfAttention
from .fsla import FSLA
from .mosa import MoSA
from .xfa import XFA


class TokenFSLA(FSLA):
    """FSLA under the mixer convention: its native layout is BOAT's [B, H, W, C] maps, a view of the tokens."""

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:  # type: ignore[override]
        if hw is None:
            raise UnsupportedOptionError("the fsla mixer needs the tokens' H x W grid")
        B, N, C = x.shape
        return self.forward_map(x.reshape(B, hw[0], hw[1], C)).reshape(B, N, C)


def _mhsa(dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> nn.Module:
    return MultiHeadSelfAttention(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)


def _xfa(
    dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float, qkv_dim: int | None = None
) -> nn.Module:
    # Outside XFormer, q/k/v are as wide as the tokens (as in MHSA), so params compare like for like.
    return XFA(dim, qkv_dim or dim, num_heads, qkv_bias, proj_drop=proj_drop)


def _mosa(dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> nn.Module:
    return MoSA(dim, num_heads, attn_drop=attn_drop)  # Ghost projections: no q/k/v bias, no output dropout


def _fsla(
    dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float, **fsla_options: Any
) -> nn.Module:
    return TokenFSLA(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **fsla_options)


@dataclass(frozen=True)
class MixerEntry:
    build: Callable[..., nn.Module]  # (dim, num_heads, qkv_bias, attn_drop, proj_drop, **options)
    needs_grid: bool  # convs or clustering on the H x W token grid: no class token in the sequence
    source: str


MIXERS: dict[str, MixerEntry] = {
    "mhsa": MixerEntry(_mhsa, False, "Vaswani et al. 2017; MobileViT §3.1, CeiT §3.3"),
    "xfa": MixerEntry(_xfa, False, "XFormer (arXiv 2207.07268) §3.1"),
    "mosa": MixerEntry(_mosa, True, "MoCoViT (arXiv 2205.12635) §3.1, Fig. 2"),
    "fsla": MixerEntry(_fsla, True, "BOAT (arXiv 2201.13027) §3.2, Eq. 2"),
}


def mixer_names(grid: bool = True) -> list[str]:
    """The registered mixers; with `grid=False` only those that need no H x W token grid."""
    return [name for name, entry in MIXERS.items() if grid or not entry.needs_grid]


def check_mixer(name: str, slot: str, grid: bool = True) -> None:
    """UnsupportedOptionError (one line, naming the mixers that fit) unless `name` can fill `slot`."""
    allowed = mixer_names(grid)
    if name not in MIXERS:
        raise UnsupportedOptionError(f"unknown attn_layer '{name}' for {slot}; choose one of {', '.join(allowed)}")
    if name not in allowed:
        raise UnsupportedOptionError(
            f"attn_layer '{name}' cannot work in {slot}: it needs an H x W token grid, which the class token "
            f"breaks; choose one of {', '.join(allowed)}"
        )


def mixer_no_weight_decay(model: nn.Module) -> set[str]:
    """Parameter names of `model`'s token mixers kept out of weight decay, wherever a mixer sits: XFA's
    temperatures lambda (2-D, so the optimiser's 1-D rule misses them; as XCiT exempts its own)."""
    return {f"{name}.temperature" for name, module in model.named_modules() if isinstance(module, XFA)}


def create_mixer(
    name: str,
    dim: int,
    num_heads: int,
    *,
    slot: str,
    grid: bool = True,
    qkv_bias: bool = True,
    attn_drop: float = 0.0,
    proj_drop: float = 0.0,
    options: dict[str, dict[str, Any]] | None = None,
) -> nn.Module:
    """Mixer `name` for a slot of width `dim` and `num_heads` heads; `options[name]`, where given, are the
    paper's settings for that mixer in this slot (e.g. XFormer's qkv_dim, BOAT's group size)."""
    check_mixer(name, slot, grid)
    return MIXERS[name].build(dim, num_heads, qkv_bias, attn_drop, proj_drop, **(options or {}).get(name, {}))
