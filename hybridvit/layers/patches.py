"""MobileViT unfold/fold (MobileViT §3.1, Fig. 1b): feature map <-> per-pixel-position patch sequences.

A [B, C, H, W] map is cut into p_h x p_w patches. Each of the P = p_h*p_w pixel positions in a patch
forms its own sequence of N = n_h*n_w tokens, giving [B*P, N, C]. When H or W is not a multiple of
the patch size, the map is bilinearly resized up to the next multiple before unfolding and back
after folding, as ml-cvnets and timm do (padding would need attention masking). Under torch.export
the resize is always taken (at the same size bilinear is an exact copy), so an exported graph keeps
H and W symbolic instead of baking in one branch. Every tensor stays at rank <= 5, which Core ML
requires (coremltools #1723).
"""
from typing import NamedTuple  # no `from __future__ import annotations`: TorchScript needs PatchGrid's real types

import torch
import torch.nn.functional as F


def _exporting() -> bool:
    """torch.compiler.is_exporting(), which TorchScript cannot compile (a scripted model is not being exported)."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_exporting()


class PatchGrid(NamedTuple):
    """What `fold_patches` needs to undo `unfold_patches`."""

    batch: int
    height: int  # size before any resize
    width: int
    patch_h: int
    patch_w: int
    num_h: int  # patches along H after resize
    num_w: int


def unfold_patches(x: torch.Tensor, patch_h: int, patch_w: int) -> tuple[torch.Tensor, PatchGrid]:
    """[B, C, H, W] -> ([B*P, N, C], grid)."""
    B, C, H, W = x.shape
    # ceil division with non-negative operands: ONNX integer Div truncates, so -(-H // p) would export wrong
    num_h, num_w = (H + patch_h - 1) // patch_h, (W + patch_w - 1) // patch_w
    if _exporting() or num_h * patch_h != H or num_w * patch_w != W:
        x = F.interpolate(x, size=(num_h * patch_h, num_w * patch_w), mode="bilinear", align_corners=False)
    x = x.reshape(B * C, num_h, patch_h, num_w, patch_w).permute(0, 2, 4, 1, 3)  # [BC, ph, pw, nh, nw]
    x = x.reshape(B, C, patch_h * patch_w, num_h * num_w).permute(0, 2, 3, 1)  # [B, P, N, C]
    tokens = x.reshape(B * patch_h * patch_w, num_h * num_w, C)
    return tokens, PatchGrid(B, H, W, patch_h, patch_w, num_h, num_w)


def fold_patches(tokens: torch.Tensor, grid: PatchGrid) -> torch.Tensor:
    """([B*P, N, C], grid) -> [B, C, H, W]; the exact inverse of `unfold_patches` (up to the resize)."""
    B, P, C = grid.batch, grid.patch_h * grid.patch_w, tokens.shape[-1]
    x = tokens.reshape(B, P, grid.num_h * grid.num_w, C).permute(0, 3, 1, 2)  # [B, C, P, N]
    x = x.reshape(B * C, grid.patch_h, grid.patch_w, grid.num_h, grid.num_w).permute(0, 3, 1, 4, 2)
    x = x.reshape(B, C, grid.num_h * grid.patch_h, grid.num_w * grid.patch_w)
    if _exporting() or x.shape[-2] != grid.height or x.shape[-1] != grid.width:
        x = F.interpolate(x, size=(grid.height, grid.width), mode="bilinear", align_corners=False)
    return x
