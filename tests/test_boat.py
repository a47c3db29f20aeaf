"""BOAT: balanced hierarchical clustering, FSLA, BOAT-Swin / BOAT-CSWin models (spec shared/specs/boat.md)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.errors import InputShapeError
from hybridvit.layers.clustering import (
    balanced_hierarchical_clustering,
    cluster_levels,
    overlapping_key_index,
    replay_cuts,
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
    assert cluster_levels(4096, 49) is None and cluster_levels(49 * 3, 49) is None


def test_clustering_is_a_balanced_partition_with_exact_inverse() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 49 * 16, 32)
    perm, inv = balanced_hierarchical_clustering(x, levels=4)
    assert perm.shape == inv.shape == (6, 784) and not perm.requires_grad
    # every token in exactly one of the 16 groups of 49 (a permutation of 0..N-1)
    assert torch.equal(perm.sort(dim=1).values, torch.arange(784).expand(6, -1))
    assert torch.equal(perm.gather(1, inv), torch.arange(784).expand(6, -1))
    clustered = x.gather(1, perm.unsqueeze(-1).expand_as(x))
    assert torch.equal(clustered.gather(1, inv.unsqueeze(-1).expand_as(x)), x)


def test_near_duplicates_share_a_group() -> None:
    torch.manual_seed(1)
    prototypes = F.normalize(torch.randn(8, 16), dim=-1)  # 8 well-separated directions, 49 noisy copies each
    labels = torch.arange(8).repeat_interleave(49)[torch.randperm(392)]
    x = prototypes[labels] + 1e-3 * torch.randn(392, 16)
    perm, _ = balanced_hierarchical_clustering(x[None], levels=3)
    groups = labels[perm[0]].view(8, 49)
    assert torch.equal(groups, groups[:, :1].expand(8, 49))  # each group holds one prototype only
    assert groups[:, 0].unique().numel() == 8


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
    with pytest.raises(InputShapeError, match=r"49\*2\*\*L|49, 98, 196"):
        FSLA(32, 2)(torch.randn(1, 8, 8, 32))
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
    with pytest.raises(InputShapeError, match="stripes of width 2 do not tile a 4x5"):
        branch(torch.randn(3, 1, 4, 5, 8))
    with pytest.raises(ValueError, match="stripe must be one of"):
        LePEAttention(8, 2, 2, "diagonal")


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["boat_swin_tiny", "boat_cswin_tiny"])
def test_shapes_and_features_at_224(name: str) -> None:
    """Shape contracts of the full-size models, propagated on the meta device (no compute)."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10).eval()
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)
        feats = timm.create_model(name, features_only=True)(torch.randn(1, 3, 224, 224))
    width = model.feature_info[0]["num_chs"]
    assert [tuple(f.shape) for f in feats] == [(1, width * 2**i, 56 // 2**i, 56 // 2**i) for i in range(4)]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]


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
    with pytest.raises(InputShapeError, match=r"input 256x256 gives a 64x64 map in stage 1; sizes that work"):
        timm.create_model("boat_swin_tiny", img_size=256, pretrained=False, num_classes=0, drop_path_rate=0.0)
    cfg, size = SMALL["swin"]
    swin = BoatTransformer(cfg, img_size=size)
    with pytest.raises(InputShapeError, match=r"built for 32x64 inputs, got 64x64; create it with img_size"):
        swin(torch.randn(1, 3, 64, 64))
    with pytest.raises(InputShapeError, match="expected 3 input channels"):
        swin(torch.randn(1, 4, *size))
    cswin = BoatTransformer(SMALL["cswin"][0], img_size=64)
    with pytest.raises(InputShapeError, match=r"input 96x96 gives a 24x24 map in stage 1"):
        cswin(torch.randn(1, 3, 96, 96))
    with pytest.raises(InputShapeError, match=r"input 32x32 gives a 1x1 map in stage 4"):
        cswin(torch.randn(1, 3, 32, 32))


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
