"""MobileViT v1 (Mehta & Rastegari, ICLR 2022, arXiv 2110.02178): MobileViT-XXS / XS / S.

Layout and numbers follow paper Table 4 and App. A, checked against ml-cvnets and timm
(see shared/specs/mobilevit.md). Module names equal timm's, so timm state dicts load unchanged;
ml-cvnets checkpoints load through `hybridvit.convert.mobilevit_from_cvnets`.
Registered as `hv_mobilevit_*`: timm already owns `mobilevit_*`.

`output_stride=16 | 8` (timm's argument) dilates the last stage(s) instead of striding (for
segmentation, MobileViT §4.3 / ml-cvnets `output_stride: 16`).

`attn_layer` (timm's keyword) swaps MHSA in every transformer layer for another token mixer of
`hybridvit.layers.mixers` (mhsa, xfa, mosa, fsla), on the patch grid of each MobileViT block.

Input size: any H, W >= 32. Feature maps whose side is not a multiple of the 2x2 patch are
bilinearly resized around the transformer, as the reference does (e.g. 224 -> 7x7 -> 8x8 -> 7x7).
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, ConvNormAct
from timm.models import generate_default_cfgs

from ..layers import MobileViTBlock, MV2Block, TransformerLayer, init_weights_cvnets, mixer_no_weight_decay
from ._base import MobileViTLayoutMixin, mobilevit_layout_stages
from ._builder import build
from ._registry import PaperEntry, register


@dataclass(frozen=True)
class MobileViTConfig:
    """One row of paper Table 4 / App. A."""

    channels: tuple[int, int, int, int, int]  # outputs of layer1..layer5
    transformer_dims: tuple[int, int, int]  # d in layer3..layer5
    depths: tuple[int, int, int] = (2, 4, 3)  # transformer layers L in layer3..layer5
    mv2_expansion: float = 4.0
    num_features: int = 640  # final 1x1 conv: min(4 * C5, 960)
    dropout: float = 0.1  # transformer dropout of the released recipe (0.05 for XXS)
    stem_chs: int = 16


class MobileViT(MobileViTLayoutMixin, nn.Module):
    """MobileViT classifier: stem, five stages (MV2 / MV2 x3 / MV2 + MobileViT block x3), 1x1 conv, head."""

    def __init__(
        self,
        cfg: MobileViTConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.1,
        drop_path_rate: float = 0.0,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        patch_size: int = 2,
        output_stride: int = 32,
        attn_layer: str = "mhsa",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        self.num_features = self.head_hidden_size = cfg.num_features
        self.stem = ConvNormAct(in_chans, cfg.stem_chs, 3, stride=2, act_layer=nn.SiLU)

        global_blocks = [
            partial(
                MobileViTBlock,
                chs,
                dim,
                [
                    TransformerLayer(
                        dim, num_heads, mlp_ratio, nn.SiLU, drop=cfg.dropout, drop_path=drop_path_rate,
                        attn_layer=attn_layer, slot="MobileViT's blocks",
                    )
                    for _ in range(depth)
                ],
                patch_size,
            )
            for chs, dim, depth in zip(cfg.channels[2:], cfg.transformer_dims, cfg.depths)
        ]
        self.stages, self.feature_info = mobilevit_layout_stages(
            cfg.stem_chs, cfg.channels, partial(MV2Block, expansion=cfg.mv2_expansion), global_blocks, output_stride
        )
        self.final_conv = ConvNormAct(cfg.channels[-1], cfg.num_features, 1, act_layer=nn.SiLU)
        self.head = ClassifierHead(cfg.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        init_weights_cvnets(self)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The paper applies weight decay 0.01 to every parameter (spec §4.7; its recipe sets decay_all); other
        # recipes exempt a swapped-in XFA's temperatures.
        return mixer_no_weight_decay(self)


MODEL_CFGS = {
    "hv_mobilevit_xxs": MobileViTConfig(
        channels=(16, 24, 48, 64, 80), transformer_dims=(64, 80, 96), mv2_expansion=2.0, num_features=320, dropout=0.05
    ),
    "hv_mobilevit_xs": MobileViTConfig(
        channels=(32, 48, 64, 80, 96), transformer_dims=(96, 120, 144), num_features=384
    ),
    "hv_mobilevit_s": MobileViTConfig(
        channels=(32, 64, 96, 128, 160), transformer_dims=(144, 192, 240), num_features=640
    ),
}


def _cfg(**kwargs) -> dict:
    # Preprocessing of the timm-converted weights: RGB in [0, 1], bicubic resize, crop 0.9 (spec §1, §5.3).
    return dict(
        num_classes=1000, input_size=(3, 256, 256), pool_size=(8, 8), crop_pct=0.9, interpolation="bicubic",
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), first_conv="stem.conv", classifier="head.fc",
        fixed_input_size=False, **kwargs,
    )


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_CFGS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> MobileViT:
    return build(MobileViT, variant, pretrained, cfg=MODEL_CFGS[variant], **kwargs)


_TABLE4 = "MobileViT Table 4 / §4.1"


@register(PaperEntry("mobilevit", 256, params_m=1.3, top1=69.0, source=_TABLE4))
def hv_mobilevit_xxs(pretrained: bool = False, **kwargs) -> MobileViT:
    return _create("hv_mobilevit_xxs", pretrained, **kwargs)


@register(PaperEntry("mobilevit", 256, params_m=2.3, top1=74.8, source=_TABLE4))
def hv_mobilevit_xs(pretrained: bool = False, **kwargs) -> MobileViT:
    return _create("hv_mobilevit_xs", pretrained, **kwargs)


@register(PaperEntry("mobilevit", 256, params_m=5.6, top1=78.4, source=_TABLE4))
def hv_mobilevit_s(pretrained: bool = False, **kwargs) -> MobileViT:
    return _create("hv_mobilevit_s", pretrained, **kwargs)
