"""Cross-shaped window attention with LePE (CSWin Transformer, Dong et al., CVPR 2022, §3.2-3.3, Eq. 3-5),
the image-space local attention (ISLA) of BOAT-CSWin.

One `LePEAttention` is one branch: heads attend inside vertical stripes (full height x `split_size`
columns), horizontal stripes (`split_size` rows x full width) or the whole map, and a depthwise 3x3 conv
of V inside each stripe (locally-enhanced positional encoding) is added to the output. Layout follows
microsoft/CSWin-Transformer `LePEAttention` (as copied in mahaoyuHKU/pytorch-boat `cswin_boat.py`). Maps that
stripes do not tile are zero-padded on both sides to the next multiple, attended with the padding, and
cropped back, as CSWin's own segmentation backbone does (microsoft/CSWin-Transformer
`segmentation/backbone/cswin_transformer.py`, `LePEAttention.forward`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

STRIPES = ("vertical", "horizontal", "full")


@register_notrace_module  # an FX leaf: the stripe check branches on the map size
class LePEAttention(nn.Module):
    """One CSWin branch on q, k, v given as [3, B, H, W, dim] (no projections of its own but `get_v`)."""

    def __init__(self, dim: int, num_heads: int, split_size: int, stripe: str, attn_drop: float = 0.0) -> None:
        super().__init__()
        if stripe not in STRIPES:
            raise ValueError(f"stripe must be one of {STRIPES}, got {stripe!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.split_size = split_size
        self.stripe = stripe
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def window(self, H: int, W: int) -> tuple[int, int]:
        """Window (rows, cols) for an H x W map (before padding to a multiple of it)."""
        if self.stripe == "full":
            return H, W
        return (H, self.split_size) if self.stripe == "vertical" else (self.split_size, W)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        _, B, H, W, C = qkv.shape
        rows, cols = self.window(H, W)
        pad_h, pad_w = -H % rows, -W % cols
        if pad_h or pad_w:  # the reference's split: half (rounded down) before, the rest after
            top, left = pad_h // 2, pad_w // 2
            out = self._attend(F.pad(qkv, (0, 0, left, pad_w - left, top, pad_h - top)), rows, cols)
            return out[:, top : top + H, left : left + W]
        return self._attend(qkv, rows, cols)

    def _attend(self, qkv: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Attention inside windows of rows x cols that tile the map of `qkv` [3, B, H, W, C]."""
        _, B, H, W, C = qkv.shape
        h, area, windows = self.num_heads, rows * cols, B * (H // rows) * (W // cols)  # no -1: B may be 0
        # [3, B, H, W, C] -> [3, B * windows, area, C]
        win = qkv.view(3, B, H // rows, rows, W // cols, cols, C).permute(0, 1, 2, 4, 3, 5, 6)
        win = win.reshape(3, windows, area, C)
        q, k, v = win.view(3, windows, area, h, C // h).transpose(2, 3).unbind(0)  # [B * windows, h, area, d]
        lepe = self.get_v(win[2].transpose(1, 2).reshape(windows, C, rows, cols))
        lepe = lepe.reshape(windows, h, C // h, area).transpose(2, 3)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0) + lepe
        out = out.transpose(1, 2).reshape(B, H // rows, W // cols, rows, cols, C)
        return out.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
