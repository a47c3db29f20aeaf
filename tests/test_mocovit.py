"""MoCoViT / MoCoViT-D and GhostNet: spec numbers (shared/specs/mocovit.md), timm parity, invariants."""
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

import hybridvit
from hybridvit.bench.flops import count_macs, count_macs_at, count_params
from hybridvit.convert.ghostnet import ghostnet_from_timm
from hybridvit.layers.attention import MultiHeadSelfAttention
from hybridvit.layers.dyrelu import DyReLU
from hybridvit.layers.ghost import GhostModule
from hybridvit.layers.moffn import MoFFN
from hybridvit.layers.mosa import MoSA
from hybridvit.layers.transformer import TransformerLayer
from hybridvit.models.mocovit import MTB, MoCoViT, MoCoViTConfig

WIDTHS = ["050", "075", "100", "130", "150"]
ALL_MODELS = ["hv_ghostnet_100"] + [f"mocovit_{w}" for w in WIDTHS] + [f"mocovit_d_{w}" for w in WIDTHS]
# MACs at 224 without attention matmuls, with them (in M), and params (in M, 2 decimals) of the
# default reading (each MTB keeps the SE choice of the GhostNet bottleneck it replaces; docs/mocovit.md).
SPEC = {
    "050": (43.9, 45.4, 2.62),
    "075": (89.5, 91.8, 3.80),
    "100": (146.7, 149.8, 5.30),
    "130": (236.2, 240.2, 7.55),
    "150": (309.9, 314.5, 9.32),
}
# The spec's first reading (shared/specs/mocovit.md §4 [calc]: SE in every MoFFN) at 1.0x.
SPEC_SE_IN_EVERY_MOFFN = (147.7, 150.7, 6.22)
C, HW = 160, 7  # the MTB stage of MoCoViT-1.0x at 224: C = 160, N = 49


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _meta(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _macs(module, *shape):
    return count_macs(module.to("meta"), torch.empty(*shape, device="meta"))


class _OnMap(nn.Module):
    """A token mixer on the H*W tokens of a [B, C, H, W] map (the mixer convention: tokens and their grid)."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        return self.mixer(x.flatten(2).transpose(1, 2), (H, W)).transpose(1, 2).reshape(B, C, H, W)


# ---- complexity: the paper's headline numbers and the spec's ratios -------------------------------


def test_mocovit_100_matches_paper_5_3m_params_147m_flops():
    """MoCoViT-1.0: 5.3M params, 147M FLOPs at 224 (the paper's table as quoted by EMOv2, arXiv 2412.06674,
    Table VII, whose MoCoViT numbers are marked as taken from the original paper; 147M also in the abstract)."""
    model = _meta("mocovit_100")
    assert count_params(model) == 5_300_268
    assert round(count_params(model) / 1e6, 1) == 5.3
    macs = count_macs_at(model, 224)
    assert round(macs.without_attention / 1e6) == 147  # FLOPs as GhostNet counts them (= MACs, no matmuls)
    # the attention matmuls of 4 MTBs: QK^T and AV at N = 49, C = 160 -> 4 * 2 * 49^2 * 160
    assert macs.attention == 4 * 2 * 49 * 49 * 160


def test_mtbs_keep_ghostnet_se_pattern():
    """MTB i keeps the SE of the bottleneck it replaces: GhostNet's last stage has SE in blocks 2 and 4 only."""
    mtbs = _meta("mocovit_100").blocks[8]
    assert [isinstance(m.moffn.se, nn.Identity) for m in mtbs] == [True, False, True, False]
    # the spec's first reading, SE in every MoFFN, stays available as a constructor argument
    with torch.device("meta"):
        every = MoCoViT(MoCoViTConfig(mtb_se_ratios=(0.25,) * 4))
    without, total, params_m = SPEC_SE_IN_EVERY_MOFFN
    macs = count_macs_at(every, 224)
    assert round(count_params(every) / 1e6, 2) == params_m
    assert macs.without_attention / 1e6 == pytest.approx(without, abs=0.06)
    assert macs.total / 1e6 == pytest.approx(total, abs=0.06)
    # the two readings differ by exactly two SE blocks on 960 channels (960 -> 240 -> 960, with biases)
    assert count_params(every) - count_params(_meta("mocovit_100")) == 2 * (960 * 240 + 240 + 240 * 960 + 960)


@pytest.mark.parametrize("width", WIDTHS)
def test_macs_and_params_match_spec_per_width(width):
    model = _meta(f"mocovit_{width}")
    without, total, params_m = SPEC[width]
    macs = count_macs_at(model, 224)
    assert macs.without_attention / 1e6 == pytest.approx(without, abs=0.06)
    assert macs.total / 1e6 == pytest.approx(total, abs=0.06)
    assert round(count_params(model) / 1e6, 2) == params_m


def test_ghostnet_100_macs_and_params():
    model = _meta("hv_ghostnet_100")
    assert count_params(model) == count_params(_meta("ghostnet_100")) == 5_182_508  # paper: 5.2M
    macs = count_macs_at(model, 224)
    assert macs.attention == 0
    assert macs.total / 1e6 == pytest.approx(141.2, abs=0.06)  # paper: 141M


def test_mosa_vs_vanilla_self_attention():
    """spec §1: MoSA 3.60x fewer MACs without attention matmuls (2.67x with), 3.5x fewer params."""
    mosa, sa = MoSA(C), MultiHeadSelfAttention(C, num_heads=1)
    m, s = _macs(_OnMap(mosa), 1, C, HW, HW), _macs(sa, 1, HW * HW, C)
    assert s.without_attention == 4 * 49 * C * C  # q, k, v and output linears
    assert m.without_attention == 49 * C * C + 18 * 49 * C  # two Ghost modules + DW 3x3
    assert m.attention == s.attention == 2 * 49 * 49 * C
    assert s.without_attention / m.without_attention == pytest.approx(3.60, abs=0.02)
    assert s.total / m.total == pytest.approx(2.67, abs=0.02)
    assert count_params(mosa) == 29_440 and count_params(sa) == 103_040  # spec: 29.4K (with BN), 103.0K


def test_moffn_vs_mlp():
    """spec §2: at expansion 4, MoFFN 5.40M vs MLP 10.04M MACs = 1.86x (paper: ~1.9x)."""
    m = _macs(MoFFN(C, 4 * C), 1, C, HW, HW)
    s = _macs(Mlp(C, 4 * C), 1, HW * HW, C)
    assert s.total == 8 * 49 * C * C
    assert m.total / 1e6 == pytest.approx(5.40, abs=0.01)
    assert s.total / m.total == pytest.approx(1.86, abs=0.02)


def test_mtb_vs_transformer_block():
    """spec §3: MTB 2.22x fewer MACs than a pre-LN block with SA + MLP(4x) without matmuls, 2.09x with."""
    m = _macs(MTB(C, 4 * C), 1, C, HW, HW)
    s = _macs(TransformerLayer(C, num_heads=1, mlp_ratio=4.0), 1, HW * HW, C)
    assert s.without_attention / m.without_attention == pytest.approx(2.22, abs=0.02)
    assert s.total / m.total == pytest.approx(2.09, abs=0.02)


# ---- GhostNet parity with timm ----------------------------------------------------------------------


def _randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.2)


def test_ghostnet_equals_timm_with_converted_weights(tmp_path):
    ref = timm.create_model("ghostnet_100").eval()
    _randomise_bn(ref)
    ours = hybridvit.create_model("hv_ghostnet_100").eval()
    ours.load_state_dict(ghostnet_from_timm(ref.state_dict()))
    torch.save(ref.state_dict(), tmp_path / "timm_ghostnet_100.pt")  # a timm checkpoint file loads as is
    from_file = hybridvit.create_model("hv_ghostnet_100", pretrained_path=tmp_path / "timm_ghostnet_100.pt")
    assert all(torch.equal(a, b) for a, b in zip(from_file.state_dict().values(), ours.state_dict().values()))
    x = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        feats = ours.forward_features(x)
        torch.testing.assert_close(feats, ref.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.forward_head(feats), ref(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            ours.forward_head(feats, pre_logits=True), ref.forward_head(feats, pre_logits=True), atol=1e-5, rtol=0
        )


def test_timm_ghostnet_weights_initialise_mocovit_cnn_part():
    ref = timm.create_model("ghostnet_100")
    model = hybridvit.create_model("mocovit_100")
    cnn_part = ghostnet_from_timm(ref.state_dict(), drop_last_stage=True)
    missing, unexpected = model.load_state_dict(cnn_part, strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("blocks.8.") for k in missing)
    key = "blocks.7.0.ghost1.primary_conv.0.weight"
    torch.testing.assert_close(model.state_dict()[key], cnn_part[key])


# ---- layer invariants ---------------------------------------------------------------------------------


def test_dyrelu_at_initialisation_is_relu():
    act = DyReLU(8)
    x = torch.randn(2, 8, 5, 5) * 3
    torch.testing.assert_close(act(x), F.relu(x), atol=0, rtol=0)


def test_dyrelu_follows_its_equation():
    """y_c = max_k(a_c^k x_c + b_c^k), a = alpha + 1.0 * theta_a, b = 0.5 * theta_b, theta = 2 sigmoid(.) - 1."""
    act = DyReLU(4, reduction=2)
    nn.init.normal_(act.fc2.weight)
    nn.init.normal_(act.fc2.bias)
    x = torch.randn(3, 4, 6, 6)
    theta = 2 * torch.sigmoid(act.fc2(F.relu(act.fc1(x.mean((2, 3)))))) - 1  # [B, 2K*C] as (a1, a2, b1, b2) x C
    a1, a2, b1, b2 = (t[:, :, None, None] for t in theta.view(3, 4, 4).unbind(1))
    expected = torch.maximum((1 + a1) * x + 0.5 * b1, a2 * x + 0.5 * b2)
    out = act(x)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, F.relu(x), atol=1e-3)  # the random hyper function changed it


def test_mosa_equals_explicit_branch_sharing_attention():
    """MoSA = Ghost_o(softmax(V V^T / sqrt(d)) V + BN(DW(V))), V = Ghost_v(X), per head, over H*W tokens."""
    mosa = MoSA(16, num_heads=2).eval()
    _randomise_bn(mosa)
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        v = mosa.ghost_v(x)
        tokens = v.flatten(2).view(2, 2, 8, 15).transpose(-1, -2)  # [B, h, N, d]
        attn = torch.softmax(tokens @ tokens.transpose(-1, -2) / 8**0.5, dim=-1)
        y = (attn @ tokens).transpose(-1, -2).reshape(2, 16, 3, 5)
        expected = mosa.ghost_o(y + mosa.bn_dw(mosa.conv_dw(v)))
        torch.testing.assert_close(_OnMap(mosa)(x), expected, atol=1e-5, rtol=0)
    assert not any("q" in n or "k" in n.split(".")[0] for n, _ in mosa.named_parameters())  # no f^q / f^k


def test_ghost_module_concatenates_intrinsic_and_ghost_maps():
    ghost = GhostModule(6, 7, act_layer=None).eval()  # odd width: ceil(7/2) = 4 intrinsic, 4 ghosts, cut to 7
    x = torch.randn(1, 6, 4, 4)
    with torch.no_grad():
        out = ghost(x)
        intrinsic = ghost.primary_conv(x)
    assert out.shape == (1, 7, 4, 4)
    torch.testing.assert_close(out[:, :4], intrinsic)
    assert ghost.cheap_operation[0].groups == 4


def test_mtb_has_two_residuals_and_no_layernorm():
    mtb = MTB(16, 32).eval()
    assert not any(isinstance(m, nn.LayerNorm) for m in mtb.modules())
    x = torch.randn(1, 16, 2, 3)  # not square: the MTB hands MoSA its tokens as (rows, cols)
    with torch.no_grad():
        z = x + _OnMap(mtb.mosa)(x)
        torch.testing.assert_close(mtb(x), z + mtb.moffn(z))


def test_mocovit_d_at_initialisation_equals_mocovit():
    """DY-ReLU starts as ReLU, so MoCoViT-D with MoCoViT's weights computes the same function."""
    plain = hybridvit.create_model("mocovit_050").eval()
    dyn = hybridvit.create_model("mocovit_d_050").eval()
    missing, unexpected = dyn.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(".fc1." in k or ".fc2." in k for k in missing)
    assert sum(isinstance(m, DyReLU) for m in dyn.modules()) == 2 * (12 + 4)  # ghost1 ReLUs: 12 G-bnecks + 4 MoFFNs
    assert not any(isinstance(m, DyReLU) for m in plain.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), plain(x), atol=1e-5, rtol=0)


# ---- model contracts, every variant ------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_shapes_features_and_training_step(name):
    model = hybridvit.create_model(name, num_classes=10, drop_rate=0.0)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, model.num_features, 2, 2)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 1280)
    assert model(x).shape == (2, 10)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


@pytest.mark.parametrize("name", ["mocovit_100", "hv_ghostnet_100"])
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 24, 40, 112, 160]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, 16, 32, 48), (1, 24, 16, 24), (1, 40, 8, 12), (1, 112, 4, 6), (1, 160, 2, 3)
    ]


def test_reset_classifier_and_odd_input_size():
    model = hybridvit.create_model("mocovit_075").eval()
    assert model.num_features == 720 and model.get_classifier().out_features == 1000
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 5)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)


def test_traceable():
    model = hybridvit.create_model("mocovit_d_050").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(x), model(x))


def test_clear_errors():
    model = hybridvit.create_model("mocovit_050")
    with pytest.raises(hybridvit.InputShapeError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="MoSA: dim 160 is not divisible by num_heads 3"):
        MoSA(160, num_heads=3)


def test_registry_entries():
    assert set(hybridvit.list_models("mocovit")) == set(ALL_MODELS)
    assert hybridvit.paper_entry("mocovit_100").top1 == 74.5
    assert hybridvit.paper_entry("mocovit_100").params_m == 5.3
    assert hybridvit.paper_entry("hv_ghostnet_100").params_m == 5.2
