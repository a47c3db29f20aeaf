"""CeiT (Yuan et al., "Incorporating Convolution Designs into Visual Transformers", ICCV 2021, arXiv 2103.11816).

CeiT-T / S / B at 224 and CeiT-T / S at 384 (names and state-dict keys of the official coeusguo/ceit
code, so its checkpoints load with `strict=True`; timm registers no `ceit_*` names). A DeiT-style
encoder with three changes: I2T conv stem (§3.2), LeFF instead of the MLP (§3.3), and LCA over the
class tokens of all layers as the head (§3.4). Details settled by shared/specs/ceit.md.

Resolution: any H, W >= 16 (multiples of 16 use every pixel; the stride-16 patch grid drops the rest).
`pos_embed` is bicubically resampled to the token grid on the fly, so a 224 model runs on 384 images
(577 tokens); `set_input_size` resamples it once and for all (fine-tuning at a new size), and
checkpoints of another size are resampled on load (`hybridvit.load_checkpoint`, timm `pretrained`).
"""

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, register_notrace_function, to_2tuple
from timm.models import checkpoint, generate_default_cfgs

from ..convert.ceit import ceit_resize_pos_embed, resample_pos_embed
from ..errors import InputShapeError, UnsupportedOptionError
from ..layers.i2t import ImageToTokens
from ..layers.lca import LCA
from ..layers.leff import LeFF
from ..layers.mixers import create_mixer, mixer_no_weight_decay
from ._base import IntermediatesMixin, new_classifier, run_stages
from ._builder import build, check_image_batch
from ._registry import PaperEntry, register

_MIN_SIZE = 16  # one 4x4 patch on the stride-4 I2T map
# `global_pool` values: "lca" = the paper's LCA over the per-layer class tokens (§3.4); "token" = the last
# layer's class token (DeiT's head, the paper's baseline without LCA); "avg" = mean of the per-layer
# class tokens; "" = no pooling (head applied to every per-layer class token).
_POOLS = ("lca", "token", "avg", "")


def check_size(height: int, width: int, min_size: int = _MIN_SIZE) -> None:  # a default: TorchScript reads no globals
    if height < min_size or width < min_size:
        raise InputShapeError(
            f"CeiT needs images of at least {min_size}x{min_size} pixels (multiples of 16 use every pixel), "
            f"got {height}x{width}"
        )


@register_notrace_function  # FX leaf: branches on the input size
def check_input(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """`x` if it is [B, in_chans, H, W] with H, W >= 16, else InputShapeError."""
    check_image_batch(x, in_chans)
    check_size(x.shape[-2], x.shape[-1])
    return x


@register_notrace_function  # FX leaf: resampling branches on the token grid
def pos_embed_for_grid(pos_embed: torch.Tensor, grid_h: int, grid_w: int, old_grid: list[int]) -> torch.Tensor:
    """`pos_embed` (class token first) resampled from `old_grid` to (grid_h, grid_w) tokens, as the official code."""
    return resample_pos_embed(pos_embed, [grid_h, grid_w], old_grid)


class CeiTBlock(nn.Module):
    """Encoder layer (§3.3): x + DropPath(MSA(LN1(x))), then x + DropPath(LeFF(LN2(x))); `attn_layer` swaps MSA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        leff_kernel_size: int = 3,
        leff_with_bn: bool = True,
        leff_final_act: bool = False,
        leff_cls_bypass: bool = False,
        attn_layer: str = "mhsa",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        # The class token leads the sequence, so only mixers that need no token grid fit (mixers.py).
        self.attn = create_mixer(
            attn_layer, dim, num_heads, slot="CeiT's encoder blocks", grid=False, qkv_bias=qkv_bias,
            attn_drop=attn_drop, proj_drop=drop,
        )
        self.norm2 = norm_layer(dim)
        self.leff = LeFF(
            dim, int(dim * mlp_ratio), leff_kernel_size, leff_with_bn, final_act=leff_final_act,
            cls_bypass=leff_cls_bypass,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.leff(self.norm2(x), grid))


@dataclass(frozen=True)
class CeiTConfig:
    """One row of the paper's model table (all variants: depth 12, head_dim 64, LeFF e = 4, k = 3)."""

    embed_dim: int
    num_heads: int
    img_size: int = 224
    depth: int = 12


class CeiT(IntermediatesMixin, nn.Module):
    """CeiT classifier: I2T -> [cls] + pos_embed -> 12 x (MSA + LeFF) -> LCA over the 12 class tokens -> LN -> head.

    `forward_features` returns the stacked class tokens of every layer [B, depth, D]; `forward_head`
    is the LCA "pooling" (+ layer position embedding), the final LayerNorm and the linear classifier.
    Paper variants (defaults = official code): `leff_final_act`, `leff_cls_bypass` (see `LeFF`),
    `i2t_chans=32` (the unofficial ports' stem width), `layer_pos_embed=False` (no `pos_layer_embed`).
    `global_pool` (timm's argument): "lca" (default, the paper's), "token", "avg" or "" (see `_POOLS`);
    only "lca" builds the LCA block and `pos_layer_embed`. `attn_layer` (timm's keyword) swaps the encoder's
    MSA for another token mixer of `hybridvit.layers.mixers` that needs no token grid (mhsa, xfa).
    """

    intermediate_fmts = ("NCHW", "NLC")  # patch-token maps or token sequences

    def __init__(
        self,
        cfg: CeiTConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        i2t_chans: int = 64,
        patch_size: int = 4,
        leff_kernel_size: int = 3,
        leff_with_bn: bool = True,
        leff_final_act: bool = False,
        leff_cls_bypass: bool = False,
        layer_pos_embed: bool = True,
        global_pool: str = "lca",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_layer: str = "mhsa",
    ) -> None:
        super().__init__()
        self._check_pool(global_pool)
        dim = cfg.embed_dim
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.i2t = ImageToTokens(dim, in_chans, i2t_chans, patch_size)
        self.img_size = to_2tuple(img_size or cfg.img_size)
        self.grid_size = self.i2t.grid_size(self.img_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, dim))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = [drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear stochastic depth
        self.blocks = nn.ModuleList(
            CeiTBlock(
                dim, cfg.num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], norm_layer,
                leff_kernel_size, leff_with_bn, leff_final_act, leff_cls_bypass, attn_layer,
            )
            for i in range(cfg.depth)
        )
        self.feature_info = [
            dict(num_chs=dim, reduction=self.i2t.reduction, module=f"blocks.{i}") for i in range(cfg.depth)
        ]

        lca = global_pool == "lca"
        self.lca = (
            LCA(dim, cfg.num_heads, mlp_ratio, qkv_bias, norm_layer, drop=drop_rate, attn_drop=attn_drop_rate)
            if lca else nn.Identity()
        )
        # Zero-initialised and weight-decayed, as in the official code (spec ceit.md §4, §6).
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, cfg.depth, dim)) if layer_pos_embed and lca else None
        self.norm = norm_layer(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # Official scheme: Linear trunc-normal(0.02), LayerNorm (1, 0); convs keep PyTorch's default init.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official/DeiT recipe exempts exactly these (plus 1-D tensors); `pos_layer_embed` is decayed.
        return {"pos_embed", "cls_token"} | mixer_no_weight_decay(self)  # with a swapped-in XFA's temperatures

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Embedding, one group per encoder layer, then the LCA head (timm's ViT grouping)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^i2t",
            blocks=[(r"^blocks\.(\d+)", None), (r"^lca|^pos_layer_embed|^norm", (99999,))],
        )

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in _POOLS:
            raise UnsupportedOptionError(f"CeiT's global_pool must be one of {list(_POOLS)}, got '{global_pool}'")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier and optionally the pooling ("lca" only if the model still has its LCA)."""
        if global_pool is not None:
            self._check_pool(global_pool)
            if global_pool == "lca" and isinstance(self.lca, nn.Identity):
                raise UnsupportedOptionError("this CeiT has no LCA block left; choose global_pool 'token', 'avg' or ''")
            if global_pool != "lca":
                self.lca, self.pos_layer_embed = nn.Identity(), None
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = new_classifier(self, self.embed_dim, num_classes)

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Resample `pos_embed` for a new default input size, e.g. before fine-tuning a 224 model at 384."""
        img_size = to_2tuple(img_size)
        check_size(*img_size)
        grid = self.i2t.grid_size(img_size)
        with torch.no_grad():
            posemb = resample_pos_embed(self.pos_embed, list(grid), list(self.grid_size))
        self.pos_embed = nn.Parameter(posemb, requires_grad=self.pos_embed.requires_grad)
        self.img_size, self.grid_size = img_size, grid

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """I2T tokens + class token + (resampled) position embedding: [B, 1 + h*w, D] and the grid (h, w)."""
        x = check_input(x, self.in_chans)
        x = self.i2t(x)
        grid = (x.shape[-2], x.shape[-1])
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)), dim=1)
        pos_embed = pos_embed_for_grid(self.pos_embed, grid[0], grid[1], list(self.grid_size))
        return self.pos_drop(x + pos_embed), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Class token after every encoder layer, stacked: [B, depth, D]."""
        x, grid = self._embed(x)
        class_tokens = []
        for block in self.blocks:
            x = checkpoint(block, x, grid) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x, grid)
            class_tokens.append(x[:, 0])
        return torch.stack(class_tokens, dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooling of the per-layer class tokens [B, depth, D] (LCA by default), LayerNorm, classifier."""
        if self.global_pool == "lca":
            if self.pos_layer_embed is not None:
                x = x + self.pos_layer_embed
            x = self.lca(x)
        elif self.global_pool == "token":
            x = x[:, -1]
        elif self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _num_taps(self) -> int:
        return len(self.blocks)

    def _run_block(self, block: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return checkpoint(block, x, grid) if self.grad_checkpointing else block(x, grid)

    def _forward_intermediates(
        self, x: torch.Tensor, take_indices: list[int], stop_index: int | None, norm: bool, output_fmt: str,
        intermediates_only: bool,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch tokens after the blocks in `take_indices`, as [B, D, h, w] maps at stride 16 or NLC, and
        (unless `intermediates_only`) the stacked class tokens of the blocks run (`forward_features`).
        `norm` has no effect: CeiT has no final norm over the patch tokens.
        """
        x, grid = self._embed(x)
        x, outputs = run_stages(self.blocks, x, range(len(self.blocks)), stop_index, partial(self._run_block, grid=grid))
        intermediates = []
        for i in take_indices:
            tokens = outputs[i][:, 1:]
            if output_fmt == "NCHW":
                tokens = tokens.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])
            intermediates.append(tokens)
        if intermediates_only:
            return intermediates
        return torch.stack([out[:, 0] for out in outputs], dim=1), intermediates

    def _prune(self, max_index: int, prune_norm: bool, prune_head: bool) -> None:
        """Drop the blocks after `max_index` (and, if `prune_head`, the LCA head)."""
        self.blocks = self.blocks[: max_index + 1]
        if prune_head:
            self.norm = nn.Identity()
            self.reset_classifier(0, "")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CeiT) -> dict[str, torch.Tensor]:
    """timm `pretrained` hook: official checkpoints need no renaming, only `pos_embed` resampling."""
    return ceit_resize_pos_embed(state_dict, model)


MODEL_CFGS = {
    "ceit_tiny_patch16_224": CeiTConfig(embed_dim=192, num_heads=3),
    "ceit_small_patch16_224": CeiTConfig(embed_dim=384, num_heads=6),
    "ceit_base_patch16_224": CeiTConfig(embed_dim=768, num_heads=12),
    "ceit_tiny_patch16_384": CeiTConfig(embed_dim=192, num_heads=3, img_size=384),
    "ceit_small_patch16_384": CeiTConfig(embed_dim=384, num_heads=6, img_size=384),
}


def _cfg(img_size: int) -> dict:
    # Official evaluation: resize to size / 0.875, bicubic, centre crop, ImageNet mean/std (spec §7).
    # pool_size: the stride-16 patch-token grid (what `forward_intermediates` returns as NCHW maps);
    # `forward_features` itself is [B, depth, D], the per-layer class tokens the LCA pools.
    grid = img_size // 16
    return dict(
        num_classes=1000, input_size=(3, img_size, img_size), pool_size=(grid, grid), crop_pct=0.875,
        interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv="i2t.backbone.conv", classifier="head", fixed_input_size=False,
    )


default_cfgs = generate_default_cfgs({name: _cfg(cfg.img_size) for name, cfg in MODEL_CFGS.items()})

# Four evenly spaced block outputs (as ViT dense-prediction heads such as DPT take), all at stride 16.
_FEATURE_BLOCKS = (2, 5, 8, 11)


def _create(variant: str, pretrained: bool = False, **kwargs) -> CeiT:
    # Not `_builder.build`: a plain ViT has no stage modules to hook, so features come from
    # `forward_intermediates` through timm's getter wrapper, as timm does for its ViTs.
    return build(
        CeiT, variant, pretrained, cfg=MODEL_CFGS[variant], pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=_FEATURE_BLOCKS), **kwargs,
    )


_SRC = "CeiT paper model table + official README model zoo (spec ceit.md §5)"


@register(PaperEntry("ceit", 224, params_m=6.4, top1=76.4, source=_SRC))
def ceit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> CeiT:
    return _create("ceit_tiny_patch16_224", pretrained, **kwargs)


@register(PaperEntry("ceit", 224, params_m=24.2, top1=82.0, source=_SRC))
def ceit_small_patch16_224(pretrained: bool = False, **kwargs) -> CeiT:
    return _create("ceit_small_patch16_224", pretrained, **kwargs)


@register(PaperEntry("ceit", 224, params_m=94.4, top1=82.5, source=_SRC + "; 150 epochs (81.9 at 100)"))
def ceit_base_patch16_224(pretrained: bool = False, **kwargs) -> CeiT:
    return _create("ceit_base_patch16_224", pretrained, **kwargs)


@register(PaperEntry("ceit", 384, params_m=6.4, top1=78.8, source=_SRC))
def ceit_tiny_patch16_384(pretrained: bool = False, **kwargs) -> CeiT:
    return _create("ceit_tiny_patch16_384", pretrained, **kwargs)


@register(PaperEntry("ceit", 384, params_m=24.2, top1=83.3, source=_SRC))
def ceit_small_patch16_384(pretrained: bool = False, **kwargs) -> CeiT:
    return _create("ceit_small_patch16_384", pretrained, **kwargs)
