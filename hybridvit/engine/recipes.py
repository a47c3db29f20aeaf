"""Training recipes of the papers as named presets (`hybridvit train --recipe NAME`).

Each preset copies its source's numbers; `source` says where they come from (see
docs/training.md and /work/shared/specs/*.md). Learning rates are for the source's global batch
`ref_batch`; with `scale_lr` the trainer scales them linearly to the actual global batch, as
DeiT and Swin do; otherwise the learning rate is used as written.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import RecipeError


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule, regularisation and augmentation of one training recipe."""

    name: str
    source: str
    epochs: int
    batch_size: int  # per process, at the base resolution
    ref_batch: int  # the global batch the source trained with
    lr: float
    min_lr: float
    warmup_lr: float
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # used instead of warmup_epochs when > 0
    opt: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.05
    decay_all: bool = False  # True: weight decay on every parameter (MobileViT); else no decay on 1-D params and no_weight_decay()
    scale_lr: bool = False
    label_smoothing: float = 0.1
    ema_decay: float | None = None  # None: no EMA
    eval_ema: bool = False  # evaluate (and pick `best`) with the EMA weights
    clip_grad: float | None = None
    amp: bool = True  # used on CUDA only
    drop_path: float = 0.0
    img_size: int | None = None  # None: the model's default input size
    multi_scale: bool = False  # MobileViT's variable-batch sampler over 0.625x..1.25x the base size
    batch_rule: str = "v0.1"
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    hflip: float = 0.5
    iou_crop: bool = True  # detection: SSD's zoom-out + IoU crop (off where objects are already small)
    affine: tuple[float, float, float] | None = None  # detection: random (translate, min scale, max scale)
    detector_kwargs: dict[str, dict] = field(default_factory=dict)  # detection: builder arguments per head, for this data
    color_jitter: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    interpolation: str = "bilinear"
    crop_pct: float | None = None  # None: the model's
    # Fine-tuning knobs (engine/finetune.py); the defaults train every layer at the same LR.
    layer_decay: float | None = None  # layer-wise LR decay: layer i of n gets lr * layer_decay**(n - 1 - i)
    backbone_lr_ratio: float = 1.0  # LR of everything but the classifier, relative to the classifier's
    freeze_epochs: int = 0  # train only the classifier for this many epochs first
    # segmentation: shorter side resized to base_size x U(ratio_range), then an img_size crop (mmseg's
    # RandomResize ratio_range + RandomCrop); the head's parameters get head_lr_mult x the learning rate
    base_size: int | None = None  # None: img_size
    ratio_range: tuple[float, float] = (0.5, 2.0)
    head_lr_mult: float = 1.0
    class_weights: str | None = None  # "enet": ml-cvnets' per-batch ENet class weights in the loss
    notes: tuple[str, ...] = field(default=())


_MOBILEVIT = Recipe(
    name="mobilevit",
    source="MobileViT paper §4.1 + ml-cvnets v0.1 config/classification/mobilevit_*.yaml (spec mobilevit.md §4.7)",
    epochs=300, batch_size=128, ref_batch=1024,
    lr=2e-3, min_lr=2e-4, warmup_lr=2e-4, warmup_steps=3000,
    weight_decay=0.01, decay_all=True, label_smoothing=0.1,
    ema_decay=0.9995, eval_ema=True,  # cvnets momentum 0.0005 per iteration
    img_size=256, multi_scale=True, batch_rule="v0.1",
    scale=(0.08, 1.0), hflip=0.5, interpolation="bilinear", crop_pct=256 / 288,
    notes=("cvnets' cosine is per epoch and not offset by the warm-up; here it is per step",),
)

_DEIT = Recipe(
    name="deit",
    source="CeiT official main.py defaults = DeiT recipe (spec ceit.md §7)",
    epochs=300, batch_size=256, ref_batch=512,
    lr=5e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5, scale_lr=True,
    opt="adamw", weight_decay=0.05, label_smoothing=0.1,
    ema_decay=0.99996, eval_ema=False, drop_path=0.1, img_size=224,
    color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
    interpolation="bicubic", crop_pct=224 / 256,
    notes=("repeated augmentation of the source is not implemented",),
)

RECIPES: dict[str, Recipe] = {
    "digits": Recipe(
        name="digits",
        source="ours: a few-minute CPU run on the embedded scikit-learn digits (not from a paper)",
        epochs=8, batch_size=32, ref_batch=32,
        lr=2e-3, min_lr=1e-5, warmup_lr=1e-4, warmup_epochs=1,
        weight_decay=0.01, label_smoothing=0.1, ema_decay=None,
        img_size=32, scale=(0.6, 1.0), hflip=0.0, crop_pct=1.0, interpolation="bilinear",
    ),
    "mobilevit": _MOBILEVIT,
    "xformer": replace(
        _MOBILEVIT,
        name="xformer",
        source="XFormer recipe not published; ml-cvnets HEAD config/classification/imagenet/mobilevit.yaml (spec xformer.md §5)",
        warmup_steps=20000, batch_rule="head",
    ),
    "deit": _DEIT,
    # CeiT's 224 -> 384 fine-tune: the official code is DeiT's main.py, and DeiT's README fine-tunes at
    # 384 with `--finetune W --input-size 384 --lr 5e-6 --min-lr 5e-6 --weight-decay 1e-8 --epochs 30`
    # at batch 32 x 16 GPUs; every other value stays main.py's default (the `deit` recipe).
    "deit_384": replace(
        _DEIT,
        name="deit_384",
        source="DeiT README 'fine-tune at 384' command on the CeiT/DeiT main.py defaults (docs/training.md)",
        epochs=30, batch_size=32, ref_batch=512, lr=5e-6, min_lr=5e-6, weight_decay=1e-8, img_size=384,
        notes=("start from weights: --init; DeiT's warm-up (5 epochs from 1e-6) is kept as main.py does",),
    ),
    "boat": Recipe(
        name="boat",
        source="BOAT-CSWin README + main.py defaults (spec boat.md §4); T/S numbers",
        epochs=300, batch_size=256, ref_batch=2048,
        lr=2e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=20,
        weight_decay=0.05, label_smoothing=0.1, ema_decay=0.99984, eval_ema=True, img_size=224,
        color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
        interpolation="random", crop_pct=224 / 256,
        notes=("timm's cooldown_epochs=10 of the source is not added",),
    ),
    "swin": Recipe(
        name="swin",
        source="BOAT-Swin = Swin config.py (spec boat.md §4)",
        epochs=300, batch_size=128, ref_batch=512,
        lr=5e-4, min_lr=5e-6, warmup_lr=5e-7, warmup_epochs=20, scale_lr=True,
        weight_decay=0.05, label_smoothing=0.1, clip_grad=5.0, img_size=224,
        color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8, cutmix=1.0,
        interpolation="bicubic", crop_pct=224 / 256,
    ),
    "mocovit": Recipe(
        name="mocovit",
        source="MoCoViT recipe not published; Mobile-Former README (spec mocovit.md §7 (a))",
        epochs=450, batch_size=128, ref_batch=1024,
        lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5,
        weight_decay=0.2, label_smoothing=0.0, img_size=224,
        auto_augment="rand-m9-mstd0.5", re_prob=0.2, mixup=0.2,
        interpolation="bicubic", crop_pct=224 / 256,
        notes=("warm-up length is not given by the source; 5 epochs is ours",),
    ),
    "ghostnet": Recipe(
        name="ghostnet",
        source="GhostNet via mindcv ghostnet_050 config (spec mocovit.md §7 (b))",
        epochs=600, batch_size=128, ref_batch=1024,
        lr=0.4, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=20,
        opt="momentum", weight_decay=2e-5, label_smoothing=0.1, img_size=224,
        auto_augment="rand-m9", re_prob=0.25, interpolation="bilinear", crop_pct=0.875,
    ),
    "digit_scenes": Recipe(
        name="digit_scenes",
        source="ours: a few-minute CPU detection run on the embedded digit scenes (not from a paper)",
        epochs=20, batch_size=8, ref_batch=8,  # val AP50 0.917 at 20 epochs; 0.846 / 0.895 at 12 (seeds 0 / 1)
        lr=2e-3, min_lr=1e-5, warmup_lr=1e-4, warmup_epochs=0.5,
        weight_decay=0.01, label_smoothing=0.0, ema_decay=None,
        img_size=160,  # the scenes' own size: digits stay 24-64 px, the size the 32 px digits backbone saw
        hflip=0.0,  # mirrored digits are other glyphs
        iou_crop=False,  # zoom-out (up to 4x) would shrink 24 px digits to 6 px; photometric distortion stays
        affine=(0.1, 0.8, 1.25),  # shifts digits off the default-box grid: 12-epoch val AP50 0.833 -> 0.846
        detector_kwargs={"ssdlite": {
            # Half SSDLite's 320 px, so the levels move one octave down (strides 8..128 + global): every
            # level keeps the paper's 20x20 ... 1x1 grid and default boxes relative to the image.
            "output_strides": (8, 16, 32, 64, 128, -1),
            "class_prior": 0.01,  # xavier scores: val AP50 0.000 after 100 steps; with the prior 0.15 (0.41 with the strides)
        }},
    ),
    "ssdlite": Recipe(
        name="ssdlite",
        source="MobileViT §4.2 + ml-cvnets v0.1 config/detection/ssd_mobilevit_*_320.yaml (COCO)",
        epochs=200, batch_size=32, ref_batch=128,  # 32 per GPU; max_lr 0.0009 is the config's formula at 4 GPUs
        lr=9e-4, min_lr=1e-6, warmup_lr=9e-5, warmup_steps=500,
        weight_decay=0.01, decay_all=True, label_smoothing=0.0, ema_decay=0.9995, eval_ema=True,
        img_size=320,  # zoom-out + IoU crop + flip stay on (SSD augmentation, the config's coco_ssd dataset)
    ),
}

# Segmentation recipes (docs/segmentation.md). The sources' poly schedules (SegFormer, UperNet) run as
# the trainer's cosine; iteration budgets are converted to epochs over the source's dataset.
RECIPES.update({
    "digit_scenes_seg": Recipe(
        name="digit_scenes_seg",
        source="ours: a CPU-minutes segmentation run on the embedded digit scenes (not from a paper)",
        epochs=12, batch_size=8, ref_batch=8,
        lr=2e-3, min_lr=1e-5, warmup_lr=1e-4, warmup_epochs=1,
        weight_decay=0.01, label_smoothing=0.0, ema_decay=None,
        img_size=96, base_size=96, ratio_range=(0.8, 1.25),  # train digits at about the sizes val shows
        hflip=0.0,  # mirrored digits are other glyphs
        class_weights="enet",  # digits are ~6% of the pixels: unweighted, every head stopped at the background prior
        notes=("start from a digits-trained backbone (--backbone-checkpoint runs/digits, the README main job)",),
    ),
    "deeplabv3": Recipe(
        name="deeplabv3",
        source="MobileViT App. D + ml-cvnets v0.1 config/segmentation/deeplabv3_mobilevit_*.yaml (PASCAL VOC)",
        epochs=50, batch_size=32, ref_batch=128,
        lr=9e-4, min_lr=1e-6, warmup_lr=9e-5, warmup_steps=500,
        weight_decay=0.01, decay_all=True, label_smoothing=0.0, ema_decay=0.9995, eval_ema=True,
        img_size=512, base_size=512, ratio_range=(0.5, 2.0),  # cvnets random_resize 256..1024, crop 512
        head_lr_mult=10.0,
    ),
    "segformer": Recipe(
        name="segformer",
        source="XFormer's all-MLP decoder: NVlabs/SegFormer local_configs/segformer/B0/segformer.b0.1024x1024.city.160k.py",
        epochs=430, batch_size=1, ref_batch=8,  # 160k iterations x 8 images over Cityscapes' 2975
        lr=6e-5, min_lr=0.0, warmup_lr=6e-11, warmup_steps=1500,
        weight_decay=0.01, label_smoothing=0.0,
        img_size=1024, base_size=1024, ratio_range=(0.5, 2.0),  # Resize (2048, 1024) ratio 0.5-2, crop 1024
        head_lr_mult=10.0,
        notes=("poly schedule (power 1) run as cosine", "PhotoMetricDistortion not applied"),
    ),
    "upernet": Recipe(
        name="upernet",
        source="BOAT-CSWin = CSWin segmentation/configs/cswin/upernet_cswin_*.py (ADE20K, 160k)",
        epochs=127, batch_size=2, ref_batch=16,  # 160k iterations x 16 images over ADE20K's 20210
        lr=6e-5, min_lr=0.0, warmup_lr=6e-11, warmup_steps=1500,
        weight_decay=0.01, label_smoothing=0.0, drop_path=0.3,
        img_size=512, base_size=512, ratio_range=(0.5, 2.0),  # Resize (2048, 512) ratio 0.5-2, crop 512
        notes=("CSWin's config has no head learning-rate multiplier", "poly schedule (power 1) run as cosine",
               "PhotoMetricDistortion not applied"),
    ),
})


def get_recipe(name: str) -> Recipe:
    """The preset called `name`; a one-line RecipeError lists the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
