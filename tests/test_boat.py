"""BOAT: balanced hierarchical clustering, FSLA, BOAT-Swin / BOAT-CSWin models (spec shared/specs/boat.md)."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import hybridvit  # noqa: F401  (registers the models)
from boat_frozen import FROZEN_CASES, NARROW, frozen_case
from hybridvit.errors import InputShapeError
from hybridvit.layers.clustering import (
    balanced_hierarchical_clustering,
    cluster_capacity,
    cluster_levels,
    overlapping_key_index,
    padded_leaf_slots,
    replay_cuts,
    _sort_order,
)
from hybridvit.layers.cswin_attention import LePEAttention
from hybridvit.layers.fsla import FSLA
from hybridvit.models.boat import BoatConfig, BoatTransformer

# Parameter counts of the reference models (pytorch-boat `SwinTransformer` with the three Swin configs,
# `CSWin_64_12211_tiny_224` / `CSWin_64_24322_small_224` / `CSWin_96_24322_base_224`), counted by
# instantiating the reference code; = published Swin/CSWin counts + (4C^2 + 16C) per FSLA block (spec §4).
REFERENCE_PARAMS = {
    "boat_swin_tiny": 30_265_186,
    "boat_swin_small": 55_158_898,
    "boat_swin_base": 97_612_960,
    "boat_cswin_tiny": 26_390_952,
    "boat_cswin_small": 40_112_488,
    "boat_cswin_base": 89_628_712,
}
FSLA_BLOCKS = {"boat_swin_tiny": 5, "boat_swin_small": 11, "boat_cswin_tiny": 14, "boat_cswin_small": 20}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_count_equals_reference(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]
    if name in FSLA_BLOCKS:
        assert sum(isinstance(m, FSLA) for m in model.modules()) == FSLA_BLOCKS[name]


def test_names_not_taken_from_timm() -> None:
    assert set(hybridvit.list_models("boat")) == set(REFERENCE_PARAMS)
    import timm.models.swin_transformer as timm_swin  # our names must not shadow timm's own

    assert not any(hasattr(timm_swin, n) for n in REFERENCE_PARAMS)


# ---------------------------------------------------------------- clustering


def test_cluster_levels() -> None:
    assert [cluster_levels(n, 49) for n in (3136, 784, 196, 49)] == [6, 4, 2, 0]
    assert [cluster_capacity(n, cluster_levels(n, 49)) for n in (3136, 784, 196, 49)] == [49] * 4
    # other sizes: the fewest splits that leave at most 49 tokens per group
    assert [cluster_levels(n, 49) for n in (4096, 49 * 3, 50, 20, 1)] == [7, 2, 1, 0, 0]
    assert [cluster_capacity(n, cluster_levels(n, 49)) for n in (4096, 49 * 3, 50, 20)] == [32, 37, 25, 20]


@pytest.mark.parametrize("num_tokens", [9600, 101, 51, 4096])
def test_padded_clustering_is_balanced_over_real_tokens(num_tokens: int) -> None:
    """Token counts that are not 49 * 2**L (320x480 stage 1: 9600): every real token in exactly one group,
    groups' real counts within one of each other, padding where `padded_leaf_slots` says, real tokens of
    siblings next to their cut (the `overlap` keys are real)."""
    levels = cluster_levels(num_tokens, 49)
    capacity = cluster_capacity(num_tokens, levels)
    slots = capacity * 2**levels
    x = torch.randn(3, num_tokens, 8, generator=torch.Generator().manual_seed(num_tokens))
    perm, inv = balanced_hierarchical_clustering(x, levels)
    assert perm.shape == (3, slots)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(slots).expand(3, -1))
    assert torch.equal(perm.gather(1, inv), torch.arange(slots).expand(3, -1))
    pads = padded_leaf_slots(num_tokens, levels)
    if pads is None:
        assert slots == num_tokens
        return
    assert torch.equal(perm >= num_tokens, pads.expand(3, -1))
    real = (~pads).view(-1, capacity).sum(dim=1)
    assert real.max() - real.min() == 1 and real.sum() == num_tokens
    keys = overlapping_key_index(2**levels, capacity, 20)
    assert not pads[keys[0::2, -20:]].any() and not pads[keys[1::2, :20]].any()  # borrowed keys are real


def test_padding_has_no_say_in_the_clustering() -> None:
    """One split of 51 tokens (two groups of 26 slots): the same as Alg. 1 on the real tokens alone, with
    the centres started from real tokens 0-25 and 26-50 and the cut after the 26th."""
    x = torch.randn(2, 51, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    perm, _ = balanced_hierarchical_clustering(x, levels=1)
    unit = F.normalize(x, dim=-1)
    centres = F.normalize(torch.stack((x[:, :26].mean(1), x[:, 26:].mean(1)), dim=1), dim=-1)
    for _ in range(2):
        near_first = torch.softmax(100 * unit @ centres.transpose(1, 2), dim=-1)  # [2, 51, 2]
        centres = F.normalize(near_first.transpose(1, 2) @ x, dim=-1)
    cos = unit @ centres.transpose(1, 2)
    order = ((cos[..., 0] + 1) / (cos[..., 1] + 1)).argsort(dim=1)
    assert torch.equal(perm[:, :26].sort(1).values, order[:, :26].sort(1).values)  # pad slot 0 in front: 51
    assert torch.equal(perm[:, 26:51], order[:, 26:]) and (perm[:, 51] == 51).all()


@pytest.mark.parametrize("num_tokens", [3136, 3200])
def test_clustering_in_cache_sized_chunks_equals_each_row_alone(num_tokens: int) -> None:
    """Eager clusters the (image, head) rows in chunks of <= 2.5 MB of float64 (3 rows of 3136 x 32: BOAT-Swin-T's
    stage 1), scripted code too; every row's result is the one it gets alone (3200 tokens: padded groups)."""
    x = torch.randn(4, num_tokens, 32, generator=torch.Generator().manual_seed(num_tokens))
    levels = cluster_levels(num_tokens, 49)
    alone = [balanced_hierarchical_clustering(row, levels) for row in x.split(1)]
    scripted = torch.jit.script(balanced_hierarchical_clustering)
    for perm, inv in (balanced_hierarchical_clustering(x, levels), scripted(x, levels)):
        assert torch.equal(perm, torch.cat([p for p, _ in alone])) and torch.equal(inv, torch.cat([i for _, i in alone]))
    if num_tokens == 3136:  # replayed orders cover all rows: no chunks then
        in_place = [torch.arange(3136 >> level).expand(4 << level, -1) for level in range(levels)]
        with replay_cuts(in_place):
            assert torch.equal(balanced_hierarchical_clustering(x, levels)[0], in_place[0])


def test_overlap_keys_are_the_widened_halves_of_the_parent() -> None:
    pos = overlapping_key_index(4, 49, 20)
    assert pos.shape == (4, 69)
    assert torch.equal(pos[0], torch.arange(0, 69)) and torch.equal(pos[1], torch.arange(29, 98))
    assert torch.equal(pos[2], torch.arange(98, 167)) and torch.equal(pos[3], torch.arange(127, 196))


# ---------------------------------------------------------------- FSLA


def _lepe_proj(fsla: FSLA, attended: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Reference tail: + depthwise conv of V in image space, then the output projection."""
    B, N, C = attended.shape
    lepe = fsla.get_v(v.transpose(1, 2).reshape(B, C, *hw)).flatten(2).transpose(1, 2)
    return fsla.proj(attended + lepe)


def test_fsla_with_one_group_is_full_attention() -> None:
    torch.manual_seed(2)
    fsla = FSLA(32, 4, group_size=64, overlap=0).eval()
    x = torch.randn(2, 8, 8, 32)
    q, k, v = fsla.qkv(x.view(2, 64, 32)).view(2, 64, 3, 4, 8).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    expected = _lepe_proj(fsla, attn.transpose(1, 2).reshape(2, 64, 32), v.transpose(1, 2).reshape(2, 64, 32), (8, 8))
    torch.testing.assert_close(fsla(x).view(2, 64, 32), expected, atol=1e-5, rtol=1e-5)


def test_fsla_equals_attention_inside_each_cluster_with_overlap() -> None:
    """Loop over images, heads and groups: queries of group g attend to the keys at `overlapping_key_index`."""
    torch.manual_seed(3)
    fsla = FSLA(16, 2, group_size=49, overlap=20, scale=1.0).eval()
    x = torch.randn(2, 14, 14, 16)
    out = fsla(x).view(2, 196, 16)
    q, k, v = fsla.qkv(x.view(2, 196, 16)).view(2, 196, 3, 2, 8).permute(2, 0, 3, 1, 4)
    perm, _ = balanced_hierarchical_clustering(q.reshape(4, 196, 8), levels=2)
    perm = perm.view(2, 2, 196)
    keys = overlapping_key_index(4, 49, 20)
    attended = torch.zeros(2, 196, 2, 8)
    for b in range(2):
        for h in range(2):
            for g in range(4):
                qi, ki = perm[b, h, g * 49 : (g + 1) * 49], perm[b, h, keys[g]]
                w = torch.softmax(q[b, h, qi] @ k[b, h, ki].T, dim=-1)  # scale 1.0
                attended[b, qi, h] = w @ v[b, h, ki]
    expected = _lepe_proj(fsla, attended.view(2, 196, 16), v.transpose(1, 2).reshape(2, 196, 16), (14, 14))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(10, 11), (3, 3), (16, 16)])
def test_fsla_on_other_token_counts_never_attends_to_padding(hw: tuple[int, int]) -> None:
    """110 tokens: 4 groups of 27-28 real tokens padded to 28; 9: one group of 9; 256: 8 groups of 32.
    A loop over real tokens only equals FSLA, so padding is neither a key nor a value."""
    torch.manual_seed(3)
    fsla = FSLA(16, 2, group_size=49, overlap=20, scale=1.0).eval()
    N = hw[0] * hw[1]
    x = torch.randn(2, *hw, 16)
    out = fsla(x).view(2, N, 16)
    q, k, v = fsla.qkv(x.view(2, N, 16)).view(2, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
    levels = cluster_levels(N, 49)
    capacity, groups = cluster_capacity(N, levels), 2**levels
    perm, _ = balanced_hierarchical_clustering(q.reshape(4, N, 8), levels)
    perm = perm.view(2, 2, -1)
    keys = overlapping_key_index(groups, capacity, 20 if groups > 1 else 0)
    attended = torch.zeros(2, N, 2, 8)
    for b in range(2):
        for h in range(2):
            for g in range(groups):
                qi, ki = perm[b, h, g * capacity : (g + 1) * capacity], perm[b, h, keys[g]]
                qi, ki = qi[qi < N], ki[ki < N]  # real tokens only
                attended[b, qi, h] = torch.softmax(q[b, h, qi] @ k[b, h, ki].T, dim=-1) @ v[b, h, ki]
    expected = _lepe_proj(fsla, attended.view(2, N, 16), v.transpose(1, 2).reshape(2, N, 16), hw)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_float32_queries_are_clustered_in_float64() -> None:
    """The clustering computes in float64 whatever the model's dtype (docs/boat.md, "Numerics"): float32
    queries give the cuts of their float64 copy. In float32 the cuts differ on near-tie inputs, which is
    what keeps float32 models' outputs unchanged and close to other runtimes'."""
    for seed in range(4):
        x = torch.randn(12, 3136, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(balanced_hierarchical_clustering(x, 6)[0], balanced_hierarchical_clustering(x.double(), 6)[0])


def test_cpu_sort_is_torchs_argsort() -> None:
    """Eager CPU sorts with numpy's argsort (issue 14: 5x faster); its orders are torch's for distinct keys."""
    key = torch.rand(96, 98, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_sort_order(key), key.argsort(dim=-1))


def test_replayed_cuts_drive_the_clustering() -> None:
    """`replay_cuts` (ONNX export checks) replaces each level's sort, in call order."""
    x = torch.randn(3, 196, 8, generator=torch.Generator().manual_seed(0))
    in_place = [torch.arange(196).expand(3, 196), torch.arange(98).expand(6, 98)]  # level 1, level 2
    assert not torch.equal(balanced_hierarchical_clustering(x, levels=2)[0], in_place[0])
    with replay_cuts(in_place):
        perm, inv = balanced_hierarchical_clustering(x, levels=2)
    assert torch.equal(perm, in_place[0]) and torch.equal(inv, in_place[0])
    with pytest.raises(RuntimeError, match="more clustering cuts"), replay_cuts(in_place[:1]):
        balanced_hierarchical_clustering(x, levels=2)
    with pytest.raises(RuntimeError, match="1 replayed cluster orders were left unused"), replay_cuts(in_place):
        balanced_hierarchical_clustering(x, levels=1)


def test_fsla_passes_gradients_to_input_and_weights() -> None:
    torch.manual_seed(4)
    fsla = FSLA(32, 2)
    x = torch.randn(2, 14, 14, 32, requires_grad=True)
    y = fsla(x)
    y.sum().backward()
    assert x.grad is not None and fsla.qkv.weight.grad.abs().sum() > 0


def test_reference_batch_pairing_couples_images_2j_and_2j_plus_1() -> None:
    torch.manual_seed(8)
    fsla = FSLA(32, 2, reference_batch_pairing=True)
    x = torch.randn(4, 7, 7, 32)
    x2 = x.clone()
    x2[1] = torch.randn(7, 7, 32)
    y, y2 = fsla(x), fsla(x2)
    assert not torch.allclose(y[0], y2[0])  # image 0 borrows 20 keys from image 1
    torch.testing.assert_close(y[2:], y2[2:])
    with pytest.raises(InputShapeError, match="reference_batch_pairing needs an even batch, got 3"):
        fsla(x[:3])
    fsla.reference_batch_pairing = False
    torch.testing.assert_close(fsla(x)[0], fsla(x2)[0])


def test_fsla_errors() -> None:
    with pytest.raises(ValueError, match="overlap must be in"):
        FSLA(32, 2, group_size=49, overlap=49)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        FSLA(30, 4)


def test_lepe_attention_stripes() -> None:
    torch.manual_seed(5)
    branch = LePEAttention(8, 2, split_size=2, stripe="vertical").eval()
    qkv = torch.randn(3, 1, 4, 4, 8)
    out = branch(qkv)
    # a vertical stripe of width 2: changing column 3 leaves columns 0-1 untouched
    qkv2 = qkv.clone()
    qkv2[..., 3, :] = torch.randn(3, 1, 4, 8)
    out2 = branch(qkv2)
    torch.testing.assert_close(out2[..., :2, :], out[..., :2, :])
    assert not torch.allclose(out2[..., 2, :], out[..., 2, :])
    # maps stripes do not tile: zero-padded on both sides (half, rounded down, before), as CSWin's
    # segmentation backbone does, then cropped
    odd = torch.randn(3, 1, 4, 5, 8)
    torch.testing.assert_close(branch(odd), branch(F.pad(odd, (0, 0, 0, 1)))[..., :5, :])
    tall = torch.randn(3, 1, 10, 5, 8)  # rows -2..4 and 5..11 form the two stripes of 7 rows
    wide = LePEAttention(8, 2, split_size=7, stripe="horizontal").eval()
    torch.testing.assert_close(wide(tall), wide(F.pad(tall, (0, 0, 0, 0, 2, 2)))[:, 2:12])
    with pytest.raises(ValueError, match="stripe must be one of"):
        LePEAttention(8, 2, 2, "diagonal")


# ---------------------------------------------------------------- models


def test_real_forward_at_224() -> None:
    torch.manual_seed(9)
    model = timm.create_model("boat_swin_tiny", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


# Reduced configs that run real compute cheaply: groups of 4 tokens, 2x2 Swin windows, small inputs.
SMALL = {
    "swin": (BoatConfig("swin", 8, (2, 2, 2, 1), (1, 2, 4, 8), 0.1, window_size=2, group_size=4, overlap=2), (32, 64)),
    "cswin": (BoatConfig("cswin", 8, (1, 1, 1, 1), (2, 2, 4, 8), 0.1, (1, 2, 2, 2), group_size=4, overlap=2), (64, 64)),
}


@pytest.mark.parametrize("isla", sorted(SMALL))
def test_small_model_real_forward_and_a_few_steps_lower_the_loss(isla: str) -> None:
    torch.manual_seed(7)
    cfg, size = SMALL[isla]
    model = BoatTransformer(cfg, num_classes=4, img_size=size)
    assert sum(isinstance(m, FSLA) for m in model.modules()) == (3 if isla == "swin" else 4)
    x, y = torch.randn(2, 3, *size), torch.tensor([1, 3])
    feats = timm.models.FeatureListNet(model, out_indices=(0, 1, 2, 3), flatten_sequential=True)(x)
    assert [f.shape[-2:] for f in feats] == [(size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    fsla = next(m for m in model.modules() if isinstance(m, FSLA))
    assert fsla.qkv.weight.grad.abs().sum() > 0


def test_model_input_errors() -> None:
    cfg, size = SMALL["swin"]
    swin = BoatTransformer(cfg, img_size=size)
    with pytest.raises(InputShapeError, match="expected 3 input channels"):
        swin(torch.randn(1, 4, *size))
    for model in (swin, BoatTransformer(SMALL["cswin"][0], img_size=64)):
        with pytest.raises(InputShapeError, match=r"BOAT needs inputs of at least 32x32 \(one token at stride 32\), got 31x64"):
            model(torch.randn(1, 3, 31, 64))
        features = timm.models.FeatureListNet(model, out_indices=(0, 1, 2, 3), flatten_sequential=True)
        with pytest.raises(InputShapeError, match="at least 32x32"):  # the check sits in the stem
            features(torch.randn(1, 3, 64, 16))


# NARROW (tests/boat_frozen.py) at the sizes that need padding in the real models.
SIZES = [(224, 224), (256, 256), (320, 480), (512, 512)]


@pytest.mark.parametrize("name", sorted(NARROW))
def test_full_models_take_any_size_on_batch_zero(name: str) -> None:
    """The registered models (one model, built at 224) at dense-prediction and odd sizes, on batch 0:
    empty outputs of the right shapes, at no compute cost (the meta device is slower than this)."""
    model = timm.create_model(name, num_classes=10).eval()
    features = timm.create_model(name, features_only=True).eval()
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        for H, W in SIZES + [(800, 1333), (225, 301), (32, 32)]:
            assert model(torch.randn(0, 3, H, W)).shape == (0, 10)
            first = (-(-H // 4), -(-W // 4)) if name.startswith("boat_swin") else ((H - 3) // 4 + 1, (W - 3) // 4 + 1)
            expected = [(first[0], first[1])]
            for _ in range(3):  # patch merging pads odd maps, CSWin's 3x3 stride-2 merge rounds up
                expected.append((-(-expected[-1][0] // 2), -(-expected[-1][1] // 2)))
            assert [tuple(f.shape) for f in features(torch.randn(0, 3, H, W))] == [
                (0, c, *hw) for c, hw in zip(features.feature_info.channels(), expected)
            ]


@pytest.mark.parametrize("name", sorted(NARROW))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_forward_backward_and_features_at_dense_sizes(name: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = BoatTransformer(NARROW[name], num_classes=3)
    x = torch.randn(1, 3, *size)
    loss = model(x).logsumexp(dim=1).sum()
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    fsla = [m for m in model.modules() if isinstance(m, FSLA)]
    assert fsla and all(m.qkv.weight.grad.abs().sum() > 0 for m in fsla)
    with torch.no_grad():
        feats = timm.models.FeatureListNet(model.eval(), out_indices=(0, 1, 2, 3), flatten_sequential=True)(x)
    assert [tuple(f.shape) for f in feats] == [(1, 8 * 2**i, size[0] // 4 // 2**i, size[1] // 4 // 2**i) for i in range(4)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("isla", sorted(SMALL))
def test_batch_zero_and_sizes_in_turn(isla: str) -> None:
    """Batch 0 gives empty outputs; a model that ran at another size (Swin's cached shift mask) gives
    the same outputs as a fresh one."""
    torch.manual_seed(0)
    cfg, size = SMALL[isla]
    model = BoatTransformer(cfg, num_classes=4, img_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(0, 3, 96, 160)).shape == (0, 4)
        x = torch.randn(2, 3, 70, 90)
        first = model(x)
        model(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(model(x), first, rtol=0, atol=0)


FROZEN_OUTPUTS = Path(__file__).parent / "data" / "boat_frozen_outputs.pt"


@pytest.mark.parametrize("case", FROZEN_CASES)
def test_outputs_unchanged_where_the_reference_works(case: str) -> None:
    """Any-size support pads nothing at 224a x 224b (a*b a power of two): the outputs equal those of the
    code before it (commit f92a001), frozen in tests/data by `tools/boat_freeze.py`, which runs
    `frozen_case` (tests/boat_frozen.py) against that commit. Float64 throughout, so that kernels that
    round differently on other CPUs (AVX2 vs AVX-512) cannot move a near-tie token across a cut: the
    frozen outputs hold on any CPU to ~1e-13, and the limit 1e-6 is what a cut flip would exceed."""
    model, x = frozen_case(case)
    frozen = torch.load(FROZEN_OUTPUTS, weights_only=True)[case]
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), frozen, rtol=0, atol=1e-6)


def test_reference_checkpoint_keys_map_onto_ours() -> None:
    from hybridvit.convert.boat import (
        boat_cswin_from_reference,
        boat_swin_from_reference,
        is_reference_boat_cswin,
        is_reference_boat_swin,
    )

    one = torch.zeros(1)
    swin_keys = [  # names as in pytorch-boat BOAT-Swin checkpoints (Microsoft Swin layout)
        "patch_embed.proj.weight", "layers.0.blocks.1.attnC.qkv.weight", "layers.0.blocks.1.norm4.bias",
        "layers.0.downsample.reduction.weight", "layers.2.blocks.5.attnC.get_v.weight",
        "layers.2.blocks.5.attn.relative_position_bias_table", "layers.0.blocks.1.attn_mask",
        "layers.1.blocks.0.attn.relative_position_index", "head.weight", "norm.bias",
    ]
    converted = boat_swin_from_reference(dict.fromkeys(swin_keys, one))
    assert is_reference_boat_swin(dict.fromkeys(swin_keys, one))
    assert "layers.1.downsample.reduction.weight" in converted and "head.fc.weight" in converted
    assert not any(k.endswith(("attn_mask", "relative_position_index")) for k in converted)
    cswin_keys = [  # pytorch-boat BOAT-CSWin (CSWin layout)
        "stage1_conv_embed.0.weight", "stage1_conv_embed.2.bias", "stage1.0.content_attn.qkv.weight",
        "stage3.20.content_attn.proj.bias", "stage3.20.norm3.weight", "merge3.conv.weight", "merge1.norm.bias",
        "stage4.0.attns.0.get_v.weight", "stage2.1.attns.1.get_v.bias", "head.bias",
    ]
    assert is_reference_boat_cswin(dict.fromkeys(cswin_keys, one))
    converted_c = boat_cswin_from_reference(dict.fromkeys(cswin_keys, one))
    with torch.device("meta"):
        ours_swin = set(timm.create_model("boat_swin_tiny").state_dict())
        ours_cswin = set(timm.create_model("boat_cswin_tiny").state_dict())
    assert set(converted) <= ours_swin
    assert set(converted_c) <= ours_cswin and "stages.3.downsample.proj.weight" in converted_c


@pytest.mark.parametrize("hw", [(56, 56), (14, 28), (21, 35)])
def test_shift_window_mask_equals_timms(hw: tuple[int, int]) -> None:
    """BOAT-Swin builds its own SW-MSA mask (TorchScript calls no super()); it must be timm's, at any padded size."""
    from timm.models.swin_transformer import SwinTransformerBlock

    from hybridvit.models.boat import BoatSwinBlock

    block = BoatSwinBlock(8, 2, 49, 20, input_resolution=(56, 56), window_size=7, shift_size=3).eval()
    x = torch.zeros(1, *hw, 1)
    torch.testing.assert_close(block.get_attn_mask(x), SwinTransformerBlock.get_attn_mask(block, x), rtol=0, atol=0)
