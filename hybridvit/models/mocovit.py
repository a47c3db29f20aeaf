"""MoCoViT and MoCoViT-D (Ma et al., "MoCoViT: Mobile Convolutional Vision Transformer", arXiv 2205.12635),
and the GhostNet they are built from (Han et al., CVPR 2020, arXiv 1911.11907, Table 1).

MoCoViT = GhostNet-1.0x layout whose last stage (four 160/960 Ghost bottlenecks at 1/32) is replaced
by four Mobile Transformer Blocks (§3.3, Fig. 2; layout from shared/specs/mocovit.md §4). Each MTB keeps
the SE choice of the bottleneck it replaces (GhostNet's 0, 0.25, 0, 0.25), which gives the paper's
5.3M params and 147M FLOPs (docs/mocovit.md, "Which reading"). MoCoViT-D replaces the ReLUs inside
the Ghost modules by DY-ReLU-B.
With `num_mtb=0` the model is GhostNet itself, registered as `hv_ghostnet_100` (timm owns
`ghostnet_100`); module names equal timm's, so timm GhostNet weights load unchanged.

Input size: any H, W >= 1 (all convs are padded; attention runs on whatever 1/32 grid results).
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, make_divisible
from timm.models import checkpoint_seq, generate_default_cfgs

from ..layers.dyrelu import DyReLU
from ..layers.ghost import ActFactory, GhostBottleneck, relu
from ..layers.moffn import MoFFN
from ..layers.mixers import create_mixer, mixer_no_weight_decay
from ._base import IntermediatesMixin, new_classifier, run_stages
from ._builder import build, check_image_batch
from ._registry import PaperEntry, register


class MTB(nn.Module):
    """Mobile Transformer Block (MoCoViT §3.3, Fig. 2): Z = X + MoSA(X); out = Z + MoFFN(Z).

    No LayerNorm, positional embedding or class token: the only norms are the BNs inside the Ghost
    modules and MoSA's depthwise branch. Works on [B, C, H, W] maps. Lives here rather than in
    layers/ because it is this family's block; MoSA and MoFFN are the shared parts.
    `attn_layer` swaps MoSA for another token mixer (`layers/mixers.py`) on the H*W tokens; the slot keeps
    the name `mosa` whatever fills it, so MoCoViT's keys stay the paper model's. No norm is added for it.
    """

    def __init__(
        self, dim: int, hidden_dim: int, num_heads: int = 1, se_ratio: float = 0.25, act_layer: ActFactory = relu,
        attn_layer: str = "mosa",
    ) -> None:
        super().__init__()
        self.mosa = create_mixer(attn_layer, dim, num_heads, slot="MoCoViT's MTB")
        self.moffn = MoFFN(dim, hidden_dim, se_ratio, act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.mosa(x.flatten(2).transpose(1, 2), (H, W))  # views: no copy for MoSA's convs
        x = x + tokens.transpose(1, 2).reshape(B, C, H, W)
        return x + self.moffn(x)


class ConvBnAct(nn.Module):
    """1x1 conv + BN + ReLU before pooling (GhostNet Table 1 "Conv2d 1x1"); names as timm's (conv, bn1)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn1(self.conv(x)))


@dataclass(frozen=True)
class GhostRow:
    """One Ghost bottleneck row of GhostNet Table 1 at width 1.0."""

    kernel: int
    exp: int
    out: int
    se_ratio: float
    stride: int


# GhostNet Table 1, grouped into stages as in the reference code (a new stage at every stride-2 row
# and around the SE change), so `blocks.<i>` names equal timm's.
GHOSTNET_STAGES: tuple[tuple[GhostRow, ...], ...] = (
    (GhostRow(3, 16, 16, 0, 1),),
    (GhostRow(3, 48, 24, 0, 2),),
    (GhostRow(3, 72, 24, 0, 1),),
    (GhostRow(5, 72, 40, 0.25, 2),),
    (GhostRow(5, 120, 40, 0.25, 1),),
    (GhostRow(3, 240, 80, 0, 2),),
    (
        GhostRow(3, 200, 80, 0, 1),
        GhostRow(3, 184, 80, 0, 1),
        GhostRow(3, 184, 80, 0, 1),
        GhostRow(3, 480, 112, 0.25, 1),
        GhostRow(3, 672, 112, 0.25, 1),
    ),
    (GhostRow(5, 672, 160, 0.25, 2),),
    (  # the stage MoCoViT replaces by MTBs of the same width, expansion and SE choice (160 / 960)
        GhostRow(5, 960, 160, 0, 1),
        GhostRow(5, 960, 160, 0.25, 1),
        GhostRow(5, 960, 160, 0, 1),
        GhostRow(5, 960, 160, 0.25, 1),
    ),
)


@dataclass(frozen=True)
class MoCoViTConfig:
    """One MoCoViT / GhostNet variant."""

    width: float = 1.0  # channel multiplier on every width except the 1280-d head, rounded to x4
    num_mtb: int = 4  # MTBs that replace GhostNet's last stage; 0 = plain GhostNet
    # SE ratio of each MTB's MoFFN; None: that of the GhostNet bottleneck it replaces (0, 0.25, 0, 0.25).
    # (0.25,) * 4, SE in every MoFFN, is the spec's first reading (6.22M params at 1.0x, not the paper's).
    mtb_se_ratios: tuple[float, ...] | None = None
    num_heads: int = 1  # MoSA heads (Fig. 2 draws no head split)
    dynamic_relu: bool = False  # MoCoViT-D: DY-ReLU-B instead of ReLU in the Ghost modules
    stem_chs: int = 16
    last_conv_chs: int = 960
    head_chs: int = 1280


class MoCoViT(IntermediatesMixin, nn.Module):
    """MoCoViT classifier: conv stem, Ghost bottleneck stages, MTBs at 1/32, 1x1 conv, pool, 1x1 conv (1280), FC."""

    def __init__(
        self,
        cfg: MoCoViTConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.2,
        attn_layer: str = "mosa",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        def chs(c: int) -> int:
            return make_divisible(c * cfg.width, 4)

        act: ActFactory = DyReLU if cfg.dynamic_relu else relu
        prev = chs(cfg.stem_chs)
        self.conv_stem = nn.Conv2d(in_chans, prev, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(prev)
        self.act1 = nn.ReLU(inplace=True)

        stages: list[nn.Sequential] = []
        stage_info: list[tuple[int, int]] = []  # (channels, reduction) after each stage
        reduction = 2
        for rows in GHOSTNET_STAGES[:-1] if cfg.num_mtb else GHOSTNET_STAGES:
            blocks = []
            for row in rows:
                blocks.append(
                    GhostBottleneck(prev, chs(row.exp), chs(row.out), row.kernel, row.stride, row.se_ratio, act)
                )
                prev = chs(row.out)
                reduction *= row.stride
            stages.append(nn.Sequential(*blocks))
            stage_info.append((prev, reduction))
        if cfg.num_mtb:
            replaced = GHOSTNET_STAGES[-1]
            se_ratios = cfg.mtb_se_ratios or [replaced[i % len(replaced)].se_ratio for i in range(cfg.num_mtb)]
            if len(se_ratios) != cfg.num_mtb:
                raise ValueError(f"mtb_se_ratios has {len(se_ratios)} entries for {cfg.num_mtb} MTBs")
            hidden = chs(replaced[0].exp)
            stages.append(nn.Sequential(*[MTB(prev, hidden, cfg.num_heads, se, act, attn_layer) for se in se_ratios]))
            stage_info.append((prev, reduction))
        # Features at the last stage of each resolution (timm's GhostNet takes them right after each
        # stride-2 block instead), so the 1/32 feature is the MTBs' output.
        self.feature_info = [
            dict(num_chs=c, reduction=r, module=f"blocks.{i}")
            for i, (c, r) in enumerate(stage_info)
            if i == len(stage_info) - 1 or stage_info[i + 1][1] != r
        ]
        self.stage_ends = [int(info["module"].split(".")[1]) for info in self.feature_info]
        self.num_features = chs(cfg.last_conv_chs)
        stages.append(nn.Sequential(ConvBnAct(prev, self.num_features)))
        self.blocks = nn.Sequential(*stages)

        self.head_hidden_size = cfg.head_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=False)
        self.conv_head = nn.Conv2d(self.num_features, cfg.head_chs, 1, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = nn.Linear(cfg.head_chs, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return mixer_no_weight_decay(self)  # a swapped-in XFA's temperatures

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=False)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        self.classifier = new_classifier(self, self.head_hidden_size, num_classes)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Stem, then one group per stage (coarse) or per block, then the head convs (timm GhostNet's)."""
        return dict(
            stem=r"^conv_stem|^bn1",
            blocks=[(r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)", None), (r"^conv_head", (99999,))],
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, self.in_chans)
        x = self.act1(self.bn1(self.conv_stem(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x, flatten=True)
        return self.blocks(x)

    def _num_taps(self) -> int:
        return len(self.stage_ends)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)

    def _forward_intermediates(
        self, x: torch.Tensor, take_indices: list[int], stop_index: int | None, norm: bool, output_fmt: str,
        intermediates_only: bool,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        # The `feature_info` levels (strides 2..32) end at blocks `stage_ends`; `norm`: no final norm to apply.
        x = self.act1(self.bn1(self.conv_stem(check_image_batch(x, self.in_chans))))
        stop_block = None if stop_index is None else self.stage_ends[stop_index]
        taps = [self.stage_ends[i] for i in take_indices]
        x, intermediates = run_stages(self.blocks, x, taps, stop_block, self._run_stage)
        return intermediates if intermediates_only else (x, intermediates)

    def _prune(self, max_index: int, prune_norm: bool, prune_head: bool) -> None:
        """Keep the blocks through the level's last one; cutting any (or `prune_head`) drops the final conv and head."""
        last = self.stage_ends[max_index]
        if max_index + 1 < len(self.stage_ends) or prune_head:  # at the last level, prune_head=False keeps it all
            self.blocks = self.blocks[: last + 1]  # drops the final 1x1 ConvBnAct too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.conv_head, self.act2 = nn.Identity(), nn.Identity()
            self.reset_classifier(0, "")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.act2(self.conv_head(self.global_pool(x))))
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


WIDTHS = {"050": 0.5, "075": 0.75, "100": 1.0, "130": 1.3, "150": 1.5}
MODEL_CFGS: dict[str, MoCoViTConfig] = {
    "hv_ghostnet_100": MoCoViTConfig(width=1.0, num_mtb=0),
    **{f"mocovit_{tag}": MoCoViTConfig(width=w) for tag, w in WIDTHS.items()},
    **{f"mocovit_d_{tag}": MoCoViTConfig(width=w, dynamic_relu=True) for tag, w in WIDTHS.items()},
}


def _cfg(**kwargs) -> dict:
    # GhostNet's ImageNet preprocessing (timm ghostnet_100): mean/std normalisation, bicubic, crop 0.875.
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv="conv_stem", classifier="classifier",
        fixed_input_size=False, **kwargs,
    )


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_CFGS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> MoCoViT:
    return build(MoCoViT, variant, pretrained, cfg=MODEL_CFGS[variant], **kwargs)


_PAPER = "MoCoViT-1.0: 5.3M params, 147M FLOPs, 74.5% (paper table as quoted by EMOv2, arXiv 2412.06674, Table VII)"
_OURS = "not in the readable paper text; width from spec mocovit.md §4"


@register(PaperEntry("mocovit", 224, params_m=5.2, top1=73.9, source="GhostNet Table 7 (arXiv 1911.11907)"))
def hv_ghostnet_100(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("hv_ghostnet_100", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_050(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_050", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_075(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_075", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, params_m=5.3, top1=74.5, source=_PAPER))
def mocovit_100(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_100", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_130(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_130", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_150(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_150", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_d_050(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_d_050", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_d_075(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_d_075", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_d_100(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_d_100", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_d_130(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_d_130", pretrained, **kwargs)


@register(PaperEntry("mocovit", 224, source=_OURS))
def mocovit_d_150(pretrained: bool = False, **kwargs) -> MoCoViT:
    return _create("mocovit_d_150", pretrained, **kwargs)
