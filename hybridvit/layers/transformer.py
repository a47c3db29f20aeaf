"""Pre-norm transformer layer: x + Attn(LN(x)), then x + MLP(LN(x))."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp

from .mixers import create_mixer


class TransformerLayer(nn.Module):
    """One pre-norm transformer layer with MHSA; module names follow timm (norm1, attn, norm2, mlp).

    `drop` is applied after the attention projection and after the MLP's second linear layer only,
    where ml-cvnets places it (timm's Mlp would also drop after the first linear layer).
    `attn_layer` names the token mixer (`layers/mixers.py`, default MHSA), `attn_options` its per-mixer
    settings (e.g. XFormer's {"xfa": {"qkv_dim": 96}}); `hw` in forward is the tokens' grid, for mixers that use it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 2.0,
        act_layer: type[nn.Module] = nn.SiLU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_layer: str = "mhsa",
        attn_options: dict[str, dict[str, Any]] | None = None,
        slot: str = "a transformer layer",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = create_mixer(
            attn_layer, dim, num_heads, slot=slot, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop,
            options=attn_options,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=(0.0, drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))
