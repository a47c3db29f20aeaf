"""BOAT, Bilateral lOcal Attention vision Transformer (Yu, Zhao, Li, Yu, BMVC 2022, arXiv 2201.13027):
BOAT-Swin-T/S/B and BOAT-CSWin-T/S/B.

A bilateral local attention block (§3.3, Eq. 1-3) is image-space local attention (ISLA: Swin windows or
CSWin cross-shaped stripes), then feature-space local attention (FSLA, `layers/fsla.py`), then an MLP,
each with a pre-norm residual. Configs, block placement and norms follow the reference code
mahaoyuHKU/pytorch-boat (spec shared/specs/boat.md §3-4); parameter counts equal the reference models'.

- BOAT-Swin: timm's Swin blocks and key layout (timm Swin weights load with the FSLA keys missing);
  FSLA (`attnC` + `norm4`, the reference's names) only in shifted-window blocks, i.e. odd blocks of the
  stages whose map is larger than the 7x7 window; no drop-path on the FSLA residual.
- BOAT-CSWin: FSLA (`content_attn` + `norm3`) in even blocks of every stage, with drop-path and
  logit scale 1 (the reference passes `qk_scale=qkv_bias=True`). In stage 4 (one group at 224) the
  reference pairs images of the batch; `reference_batch_pairing=True` reproduces that, the default
  keeps images independent.

Input size: any H x W from 32 x 32 up (`MIN_INPUT_SIZE`), any batch (0 included), one model for all sizes,
as timm's Swin with `dynamic_img_size=True`: BOAT-Swin pads the image to a multiple of the patch size,
odd maps before patch merging and maps to whole windows (timm `SwinTransformerBlock`, shift masks built
for the size seen); BOAT-CSWin pads maps to whole stripes (CSWin's segmentation backbone); FSLA pads
token counts that are not 49 * 2**L (`layers/fsla.py`). Where the reference works (224a x 224b, a*b a
power of two) nothing is padded and the outputs are the reference's. `img_size` only decides, as in
timm and the reference, which Swin stages shift their windows and so hold FSLA (those larger than the
window at that size).

`attn_layer` (timm's keyword) puts another token mixer of `hybridvit.layers.mixers` in FSLA's slot
(mhsa, xfa, mosa, fsla), on the stage's H x W tokens; the slot keeps the reference's key names.
"""

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, Mlp, register_notrace_module, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock

from ..errors import InputShapeError
from ..layers.cswin_attention import LePEAttention
from ..layers.fsla import FSLA
from ..layers.mixers import create_mixer, mixer_no_weight_decay
from ._base import ClassifierHeadMixin, IntermediatesMixin, run_stages
from ._builder import build, check_image_batch
from ._registry import PaperEntry, register

MIN_INPUT_SIZE = 32  # one token at stride 32, the last stage's


@register_notrace_module  # an FX leaf: window padding and the shift mask follow the map size
class BoatSwinBlock(SwinTransformerBlock):
    """Bilateral local attention block on Swin (§3.3): (S)W-MSA, then FSLA in shifted blocks, then MLP."""

    def __init__(
        self, dim: int, num_heads: int, group_size: int, overlap: int, attn_layer: str = "fsla", **kwargs
    ) -> None:
        super().__init__(dim=dim, num_heads=num_heads, dynamic_mask=True, **kwargs)
        self.attnC = self.norm4 = None
        if any(self.shift_size):  # reference: FSLA only where the window is shifted
            self.norm4 = nn.LayerNorm(dim)
            self.attnC = _fsla_slot(attn_layer, dim, num_heads, group_size=group_size, overlap=overlap)
        self._mask_cache: tuple[tuple, torch.Tensor | None] = ((), None)

    def get_attn_mask(
        self, x: Optional[torch.Tensor] = None, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> Optional[torch.Tensor]:
        """timm's shift mask for the padded, shifted map `x` [B, Hp, Wp, C] (or the built size if `x` is None),
        kept for the last size seen in eager."""
        if not any(self.shift_size):
            return None
        if x is None:
            (H, W), (wh, ww) = self.input_resolution, self.window_size
            return shift_window_mask(-(-H // wh) * wh, -(-W // ww) * ww, self.window_size, self.shift_size, device, dtype)
        if torch.jit.is_scripting():
            return shift_window_mask(x.shape[1], x.shape[2], self.window_size, self.shift_size, x.device, x.dtype)
        if torch.compiler.is_compiling():
            return shift_window_mask(x.shape[1], x.shape[2], self.window_size, self.shift_size, x.device, x.dtype)
        key = (x.shape[1], x.shape[2], x.device, x.dtype, torch.is_inference_mode_enabled())
        cached_key, mask = self._mask_cache
        if cached_key != key:
            mask = shift_window_mask(x.shape[1], x.shape[2], self.window_size, self.shift_size, x.device, x.dtype)
            self._mask_cache = (key, mask)
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if B:  # timm's window views use -1, undefined on no images
            x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, H * W, C)
        if self.attnC is not None:
            x = x + self.attnC(self.norm4(x), (H, W))  # no drop-path here in the reference
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


def _shift_regions(size: int, window: int, shift: int, device: Optional[torch.device]) -> torch.Tensor:
    """Region of each row (or column) of a rolled map: 0 before the last window, 1 in it, 2 rolled in."""
    pos = torch.arange(size, device=device)
    return (pos >= size - window).long() + (pos >= size - shift).long()


def shift_window_mask(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
    device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Swin's SW-MSA mask for a rolled map of `height` x `width` (whole windows): [windows, area, area], -100
    between two tokens of a window that come from different regions of the unrolled map, 0 elsewhere
    (what timm's `SwinTransformerBlock.get_attn_mask` builds; ours, as TorchScript calls no super())."""
    rows = _shift_regions(height, window[0], shift[0], device)
    region = rows.unsqueeze(1) * 3 + _shift_regions(width, window[1], shift[1], device)
    area = window[0] * window[1]
    region = region.view(height // window[0], window[0], width // window[1], window[1]).transpose(1, 2).reshape(-1, area)
    differ = region.unsqueeze(1) != region.unsqueeze(2)
    return torch.zeros(differ.shape, device=device, dtype=dtype).masked_fill(differ, -100.0)


class _Stage(nn.Module):
    """A stage: `downsample` then `blocks` (NHWC), set by the subclass."""

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks on NHWC `x` (each recomputed in backward under grad checkpointing), back to NCHW."""
        if torch.jit.is_scripting():
            x = self.blocks(x)
        elif self.grad_checkpointing:
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class BoatSwinStage(_Stage):
    """Patch merging (except stage 1) then BOAT-Swin blocks; NCHW in and out."""

    def __init__(
        self, dim: int, out_dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
        window_size: int, downsample: bool, drop_path: list[float], group_size: int, overlap: int,
        mlp_ratio: float = 4.0, attn_layer: str = "fsla",
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            BoatSwinBlock(
                out_dim, num_heads, group_size, overlap, attn_layer, input_resolution=resolution,
                window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio, drop_path=drop_path[i],
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(self.downsample(x.permute(0, 2, 3, 1)))


class BoatCSWinBlock(nn.Module):
    """Bilateral local attention block on CSWin (§3.3): cross-shaped window attention, FSLA, MLP.

    Two ISLA branches (vertical / horizontal stripes, half the channels and heads each), or one branch
    over the whole map in the last stage, share `qkv` and `proj` as in the reference `CSWinBlock`.
    """

    def __init__(
        self, dim: int, num_heads: int, split_size: int, last_stage: bool, fsla: bool, group_size: int,
        overlap: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, attn_layer: str = "fsla",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, num_heads, split_size, "full")])
        else:
            self.attns = nn.ModuleList(
                [LePEAttention(dim // 2, num_heads // 2, split_size, s) for s in ("vertical", "horizontal")]
            )
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.content_attn = self.norm3 = None
        if fsla:
            self.norm3 = nn.LayerNorm(dim)
            self.content_attn = _fsla_slot(
                attn_layer, dim, num_heads, group_size=group_size, overlap=overlap, scale=1.0
            )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, H, W, 3, C).permute(3, 0, 1, 2, 4)
        branches, width = len(self.attns), C // len(self.attns)
        parts = [attn(qkv[..., i * width : (i + 1) * width]) for i, attn in enumerate(self.attns)]  # channel halves
        isla = parts[0] if branches == 1 else torch.cat(parts, dim=-1)
        x = x + self.drop_path(self.proj(isla))
        if self.content_attn is not None:
            fsla = self.content_attn(self.norm3(x).reshape(B, H * W, C), (H, W)).reshape(B, H, W, C)
            x = x + self.drop_path(fsla)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Module):
    """Strided conv, then LayerNorm over channels; NCHW in and out (Swin patch embedding, CSWin stem/merge)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = nn.LayerNorm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # a method, not super().forward: TorchScript has no super()
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register_notrace_module  # an FX leaf: the checks and the padding branch on the input size
class InputStem(ConvEmbed):
    """The first ConvEmbed: checks the input, pads H and W up to a multiple of `pad_to` (timm's
    `dynamic_img_pad` for Swin's 4x4 patches; 1 for CSWin's padded 7x7 stem), then embeds."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int, pad_to: int) -> None:
        super().__init__(in_chs, out_chs, kernel_size, stride, padding)
        self.pad_to = pad_to
        self.min_size = MIN_INPUT_SIZE  # an attribute: TorchScript reads no module-level ints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.proj.in_channels)
        H, W = x.shape[-2:]
        if H < self.min_size or W < self.min_size:
            raise InputShapeError(
                f"BOAT needs inputs of at least {self.min_size}x{self.min_size} (one token at stride 32), got {H}x{W}"
            )
        if H % self.pad_to or W % self.pad_to:
            x = F.pad(x, (0, -W % self.pad_to, 0, -H % self.pad_to))
        return self.embed(x)


class BoatCSWinStage(_Stage):
    """Merge block (3x3 conv stride 2; absent in stage 1) then BOAT-CSWin blocks; NCHW in and out."""

    def __init__(
        self, dim: int, out_dim: int, depth: int, num_heads: int, split_size: int, downsample: bool,
        last_stage: bool, drop_path: list[float], group_size: int, overlap: int, mlp_ratio: float = 4.0,
        attn_layer: str = "fsla",
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = ConvEmbed(dim, out_dim, 3, 2, 1) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            BoatCSWinBlock(
                out_dim, num_heads, split_size, last_stage, i % 2 == 0, group_size, overlap, mlp_ratio, drop_path[i],
                attn_layer,
            )
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_blocks(self.downsample(x).permute(0, 2, 3, 1))


def _fsla_slot(attn_layer: str, dim: int, num_heads: int, **fsla_options) -> nn.Module:
    """The token mixer in FSLA's place (`attn_layer`, layers/mixers.py); FSLA itself with the reference's options."""
    return create_mixer(attn_layer, dim, num_heads, slot="BOAT's FSLA slot", options={"fsla": fsla_options})


@dataclass(frozen=True)
class BoatConfig:
    """One BOAT variant (reference configs, spec §4)."""

    isla: str  # "swin" or "cswin"
    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    drop_path_rate: float
    split_sizes: tuple[int, int, int, int] = (1, 2, 7, 7)  # CSWin stripe widths per stage
    window_size: int = 7  # Swin window
    group_size: int = 49  # FSLA cluster size m (the reference hard-codes 49 = 7 x 7)
    overlap: int = 20  # keys shared between last-level siblings (the reference's n = 20)


class BoatTransformer(IntermediatesMixin, ClassifierHeadMixin, nn.Module):
    """BOAT classifier: 4x4 patch embedding, four stages of bilateral local attention blocks, norm, head."""

    def __init__(
        self,
        cfg: BoatConfig,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | tuple[int, int] = 224,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        mlp_ratio: float = 4.0,
        reference_batch_pairing: bool = False,
        attn_layer: str = "fsla",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        dims = [cfg.embed_dim * 2**i for i in range(4)]
        self.num_features = self.head_hidden_size = dims[-1]
        rate = cfg.drop_path_rate if drop_path_rate is None else drop_path_rate
        total = sum(cfg.depths)
        dpr = [rate * i / max(total - 1, 1) for i in range(total)]  # linear stochastic-depth decay
        dpr = [dpr[sum(cfg.depths[:i]) : sum(cfg.depths[: i + 1])] for i in range(4)]
        maps = [(self.img_size[0] // 2 ** (i + 2), self.img_size[1] // 2 ** (i + 2)) for i in range(4)]
        if cfg.isla == "swin":
            self.patch_embed = InputStem(in_chans, dims[0], 4, 4, 0, pad_to=4)
            self.layers = nn.Sequential(*[
                BoatSwinStage(dims[max(i - 1, 0)], dims[i], maps[i], cfg.depths[i], cfg.num_heads[i],
                              cfg.window_size, i > 0, dpr[i], cfg.group_size, cfg.overlap, mlp_ratio, attn_layer)
                for i in range(4)
            ])
        else:
            self.stem = InputStem(in_chans, dims[0], 7, 4, 2, pad_to=1)
            self.stages = nn.Sequential(*[
                BoatCSWinStage(dims[max(i - 1, 0)], dims[i], cfg.depths[i], cfg.num_heads[i], cfg.split_sizes[i],
                               i > 0, i == 3, dpr[i], cfg.group_size, cfg.overlap, mlp_ratio, attn_layer)
                for i in range(4)
            ])
        stage_name = "layers" if cfg.isla == "swin" else "stages"
        self.feature_info = [
            dict(num_chs=d, reduction=4 * 2**i, module=f"{stage_name}.{i}") for i, d in enumerate(dims)
        ]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(_init_weights)
        for module in self.modules():  # see FSLA: only matters where a stage has a single group
            if isinstance(module, FSLA):
                module.reference_batch_pairing = reference_batch_pairing

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n} | mixer_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Stem, then per stage (coarse) or per block with each merge layer first, then the final norm (timm Swin's)."""
        stem, stages = ("patch_embed", "layers") if hasattr(self, "layers") else ("stem", "stages")
        return dict(
            stem=rf"^{stem}",
            blocks=rf"^{stages}\.(\d+)" if coarse else [
                (rf"^{stages}\.(\d+)\.downsample", (0,)),
                (rf"^{stages}\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self._stage_list():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def _stage_list(self) -> nn.Sequential:
        return self.layers if hasattr(self, "layers") else self.stages

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding (BOAT-Swin) or the conv stem (BOAT-CSWin), which check the input: NCHW at stride 4."""
        return self.patch_embed(x) if hasattr(self, "layers") else self.stem(x)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        x = self.layers(x) if hasattr(self, "layers") else self.stages(x)
        return self._final_norm(x)

    def _num_taps(self) -> int:
        return len(self._stage_list())

    def _forward_intermediates(
        self, x: torch.Tensor, take_indices: list[int], stop_index: int | None, norm: bool, output_fmt: str,
        intermediates_only: bool,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        # Stage outputs (strides 4..32); `norm` applies the final LayerNorm to the last stage's, as timm's Swin.
        stages = self._stage_list()
        last = len(stages) - 1
        x, intermediates = run_stages(stages, self._embed(x), take_indices, stop_index, lambda stage, t: stage(t))
        if norm and last in take_indices:
            intermediates[-1] = self._final_norm(intermediates[-1])
        if intermediates_only:
            return intermediates
        if stop_index is None or stop_index == last:
            x = self._final_norm(x)
        return x, intermediates

    def _prune(self, max_index: int, prune_norm: bool, prune_head: bool) -> None:
        """Drop the stages after `max_index` (and the final norm / head); used by `features_only`."""
        setattr(self, "layers" if hasattr(self, "layers") else "stages", self._stage_list()[: max_index + 1])
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")


def _init_weights(m: nn.Module) -> None:
    """Reference init: Linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0); convs keep PyTorch's."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


MODEL_CFGS = {
    "boat_swin_tiny": BoatConfig("swin", 96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "boat_swin_small": BoatConfig("swin", 96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
    "boat_swin_base": BoatConfig("swin", 128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
    "boat_cswin_tiny": BoatConfig("cswin", 64, (1, 2, 21, 1), (2, 4, 8, 16), 0.2),
    "boat_cswin_small": BoatConfig("cswin", 64, (2, 4, 32, 2), (2, 4, 8, 16), 0.4),
    "boat_cswin_base": BoatConfig("cswin", 96, (2, 4, 32, 2), (4, 8, 16, 32), 0.5),
}


def _cfg(first_conv: str) -> dict:
    # ImageNet mean/std, bicubic, crop 0.9: the evaluation settings of both reference trainers.
    return dict(
        num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9, interpolation="bicubic",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), first_conv=first_conv, classifier="head.fc",
    )


default_cfgs = generate_default_cfgs({
    name: _cfg("patch_embed.proj" if cfg.isla == "swin" else "stem.proj") for name, cfg in MODEL_CFGS.items()
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> BoatTransformer:
    if kwargs.get("features_only"):
        kwargs.setdefault("out_indices", (0, 1, 2, 3))  # four stages, strides 4 / 8 / 16 / 32
    return build(BoatTransformer, variant, pretrained, cfg=MODEL_CFGS[variant], **kwargs)


# Paper tables could not be read offline (spec §0): params are the reference models' counts, top-1 only
# where the seed article states it.
_SRC = "paper tables unreadable offline; top-1 from the seed article"


@register(PaperEntry("boat", 224, source=_SRC))
def boat_swin_tiny(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_swin_tiny", pretrained, **kwargs)


@register(PaperEntry("boat", 224, source=_SRC))
def boat_swin_small(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_swin_small", pretrained, **kwargs)


@register(PaperEntry("boat", 224, source=_SRC))
def boat_swin_base(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_swin_base", pretrained, **kwargs)


@register(PaperEntry("boat", 224, top1=83.7, source=_SRC))
def boat_cswin_tiny(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_cswin_tiny", pretrained, **kwargs)


@register(PaperEntry("boat", 224, source=_SRC))
def boat_cswin_small(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_cswin_small", pretrained, **kwargs)


@register(PaperEntry("boat", 224, source=_SRC))
def boat_cswin_base(pretrained: bool = False, **kwargs) -> BoatTransformer:
    return _create("boat_cswin_base", pretrained, **kwargs)
