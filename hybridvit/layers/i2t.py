"""I2T, Image-to-Tokens (CeiT, Yuan et al. ICCV 2021, §3.2): a light conv stem, then patch tokens.

x' = MaxPool(BN(Conv(x))), with no activation (paper Eq. 4 and the official code), followed by a
non-overlapping P/S x P/S patch projection on x' (S = 4, so 4x4 patches cover 16x16 input pixels).
Module names (`backbone.conv`, `backbone.bn`, `proj`) follow the official coeusguo/ceit layout.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class I2TStem(nn.Module):
    """Conv k x k / stride 2 (no bias) -> BN -> MaxPool 3x3 / stride 2: total stride 4."""

    def __init__(self, in_chans: int = 3, out_chans: int = 64, kernel_size: int = 7, stride: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.bn(self.conv(x)))

    def output_size(self, size: int) -> int:
        """Side length of the stem output for an input side `size` (conv and pool arithmetic)."""
        k, s, p = self.conv.kernel_size[0], self.conv.stride[0], self.conv.padding[0]
        size = (size + 2 * p - k) // s + 1
        return (size + 2 * 1 - 3) // 2 + 1


class ImageToTokens(nn.Module):
    """I2T stem + `patch_size` x `patch_size` conv projection to `embed_dim`: [B, C, H, W] -> [B, D, h, w]."""

    def __init__(
        self, embed_dim: int, in_chans: int = 3, stem_chans: int = 64, patch_size: int = 4, kernel_size: int = 7
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.reduction = 4 * patch_size  # input pixels per token side: stem stride 4 x patch size
        self.backbone = I2TStem(in_chans, stem_chans, kernel_size)
        self.proj = nn.Conv2d(stem_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid (h, w) produced for an image of `img_size` (H, W)."""
        height, width = (self.backbone.output_size(s) // self.patch_size for s in img_size)
        return height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))
