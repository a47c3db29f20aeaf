"""XFormer (Zhao et al., "Lightweight Vision Transformer with Cross Feature Attention", arXiv 2207.07268).

A MobileViT-style CNN-ViT hybrid (§3.2): MobileNetV3 blocks (MV3) and XF blocks, whose transformer
layers use Cross Feature Attention (XFA, `hybridvit.layers.xfa`) and so cost linear in the tokens.
Layout: MobileViT-S's Table-4 layout with MV2 -> MV3 and MHSA -> XFA, the reading of the seed's
Table 1 description in shared/specs/xformer.md §3 (embed dims 144/192/240, QKV dim 96, MLP ratios
2/2/3, MV3 expansion 4 with SE, SiLU except GELU in the MLPs); it gives the paper's 5.5M params.

`output_stride=16 | 8` dilates the last stage(s) as in MobileViT (dense heads). `attn_layer` (timm's
keyword) swaps XFA for another token mixer of `hybridvit.layers.mixers` (mhsa, xfa, mosa, fsla).

Input size: any H, W; feature maps whose side is not a multiple of the 2x2 patch are bilinearly
resized around the transformer, as in MobileViT.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, ConvNormAct
from timm.models import generate_default_cfgs

from ..layers.init import init_weights_cvnets
from ..layers.mixers import mixer_no_weight_decay
from ..layers.mobilenet_blocks import MV3Block
from ..layers.mobilevit_block import MobileViTBlock
from ..layers.transformer import TransformerLayer
from ._base import MobileViTLayoutMixin, mobilevit_layout_stages
from ._builder import build
from ._registry import PaperEntry, register


def xf_block(
    channels: int,
    embed_dim: int,
    depth: int,
    qkv_dim: int = 96,
    mlp_ratio: float = 2.0,
    heads: int = 1,
    patch_size: int = 2,
    drop: float = 0.0,
    drop_path: float = 0.0,
    dilation: int = 1,
    attn_layer: str = "xfa",
) -> MobileViTBlock:
    """XF block (§3.2): MobileViT's local conv, 2x2 unfold, L XF layers + LN, fold, 1x1 projection, fusion.

    An XF layer is x + XFA(LN(x)), then x + MLP(LN(x)) with a GELU MLP. The local/fusion convs around
    the XFA stack are MobileViT v1's (spec §2, reconstructed). `attn_layer` swaps XFA for another
    mixer of `hybridvit.layers.mixers` (with `heads` heads; `qkv_dim` applies to XFA only).
    """
    layers = [
        TransformerLayer(
            embed_dim, heads, mlp_ratio, nn.GELU, drop=drop, drop_path=drop_path, attn_layer=attn_layer,
            attn_options={"xfa": {"qkv_dim": qkv_dim}}, slot="XFormer's XF blocks",
        )
        for _ in range(depth)
    ]
    return MobileViTBlock(channels, embed_dim, layers, patch_size, dilation=dilation)


@dataclass(frozen=True)
class XFormerConfig:
    """One XFormer variant (paper §3.2 / Table 1 as read in spec §3)."""

    channels: tuple[int, int, int, int, int]  # outputs of stages 1..5
    embed_dims: tuple[int, int, int]  # XF embedding dim in stages 3..5
    depths: tuple[int, int, int] = (2, 4, 3)  # XF layers per block in stages 3..5 (MobileViT-S's)
    mlp_ratios: tuple[float, float, float] = (2.0, 2.0, 3.0)
    qkv_dim: int = 96
    heads: int = 1
    mv3_expansion: float = 4.0
    num_features: int = 640  # final 1x1 conv
    dropout: float = 0.1  # transformer dropout; MobileViT-S recipe (XFormer's is unknown)
    stem_chs: int = 16


class XFormer(MobileViTLayoutMixin, nn.Module):
    """XFormer classifier: stem, five stages (MV3 / MV3 x3 / MV3 + XF block x3), 1x1 conv, pool, classifier."""

    def __init__(
        self,
        cfg: XFormerConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        patch_size: int = 2,
        output_stride: int = 32,
        attn_layer: str = "xfa",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = cfg.num_features
        self.stem = ConvNormAct(in_chans, cfg.stem_chs, 3, stride=2, act_layer=nn.SiLU)

        global_blocks = [
            partial(
                xf_block, chs, dim, depth, cfg.qkv_dim, ratio, cfg.heads, patch_size, cfg.dropout, drop_path_rate,
                attn_layer=attn_layer,
            )
            for chs, dim, depth, ratio in zip(cfg.channels[2:], cfg.embed_dims, cfg.depths, cfg.mlp_ratios)
        ]
        self.stages, self.feature_info = mobilevit_layout_stages(
            cfg.stem_chs, cfg.channels, partial(MV3Block, expansion=cfg.mv3_expansion), global_blocks, output_stride
        )
        self.final_conv = ConvNormAct(cfg.channels[-1], cfg.num_features, 1, act_layer=nn.SiLU)
        self.head = ClassifierHead(cfg.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        init_weights_cvnets(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The XFA temperatures lambda (as XCiT does for its temperature)."""
        return mixer_no_weight_decay(self)


MODEL_CFGS = {
    # The paper's model (5.5M params).
    "xformer_s": XFormerConfig(channels=(32, 64, 96, 128, 160), embed_dims=(144, 192, 240)),
    # Not in the paper: MobileViT-XS / XXS widths with the same MV3 -> XFA swap; QKV dim scaled by
    # the paper's S ratio (96 / 144 = 2/3 of the first embed dim).
    "xformer_xs": XFormerConfig(
        channels=(32, 48, 64, 80, 96), embed_dims=(96, 120, 144), qkv_dim=64, num_features=384
    ),
    "xformer_xxs": XFormerConfig(
        channels=(16, 24, 48, 64, 80), embed_dims=(64, 80, 96), qkv_dim=48, mv3_expansion=2.0,
        num_features=320, dropout=0.05,
    ),
}


def _cfg(**kwargs) -> dict:
    # MobileViT's preprocessing (RGB in [0, 1], bicubic, crop 0.9); XFormer trains at 256 like it.
    return dict(
        num_classes=1000, input_size=(3, 256, 256), pool_size=(8, 8), crop_pct=0.9, interpolation="bicubic",
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), first_conv="stem.conv", classifier="head.fc",
        fixed_input_size=False, **kwargs,
    )


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_CFGS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> XFormer:
    return build(XFormer, variant, pretrained, cfg=MODEL_CFGS[variant], **kwargs)


_PAPER = "XFormer arXiv 2207.07268 abstract / §3.2"
_OURS = "not in paper"


@register(PaperEntry("xformer", 256, params_m=5.5, top1=78.5, source=_PAPER))
def xformer_s(pretrained: bool = False, **kwargs) -> XFormer:
    return _create("xformer_s", pretrained, **kwargs)


@register(PaperEntry("xformer", 256, params_m=None, top1=None, source=_OURS))
def xformer_xs(pretrained: bool = False, **kwargs) -> XFormer:
    return _create("xformer_xs", pretrained, **kwargs)


@register(PaperEntry("xformer", 256, params_m=None, top1=None, source=_OURS))
def xformer_xxs(pretrained: bool = False, **kwargs) -> XFormer:
    return _create("xformer_xxs", pretrained, **kwargs)
