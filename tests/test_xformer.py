"""XFormer / XFA: paper parameter count, linear cost of XFA, the XFA equation, shapes, training."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import hybridvit  # noqa: F401  (registers the models with timm)
from hybridvit.bench.flops import count_macs, count_params
from hybridvit.errors import InputShapeError
from hybridvit.layers.attention import MultiHeadSelfAttention
from hybridvit.layers.mobilenet_blocks import MV3Block
from hybridvit.layers.xfa import XFA
from hybridvit.models import list_models, paper_entry


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_xformer_s_has_the_papers_5_5m_params():
    n = count_params(_meta_model("xformer_s"))
    assert abs(n / 5.5e6 - 1) <= 0.02, n
    assert n == 5_474_698  # spec §3 [derived]: 5.475M for QKV 96, MLP 2/2/3, MV3 with SE, vector kernels (+9 b_N)


def test_registry_entries():
    assert list_models("xformer") == ["xformer_s", "xformer_xs", "xformer_xxs"]
    s = paper_entry("xformer_s")
    assert (s.params_m, s.top1, s.input_size) == (5.5, 78.5, 256)
    for name in ("xformer_xs", "xformer_xxs"):
        e = paper_entry(name)
        assert (e.source, e.params_m, e.top1) == ("not in paper", None, None)
    sizes = [count_params(_meta_model(n)) for n in ("xformer_xxs", "xformer_xs", "xformer_s")]
    assert sizes == sorted(sizes)


def _macs(module: torch.nn.Module, tokens: int, dim: int = 144) -> int:
    return count_macs(module.to("meta"), torch.empty(4, tokens, dim, device="meta")).total


def test_xfa_macs_match_the_hand_count():
    dim, qkv, n, b = 144, 96, 256, 4
    # Q/K/V and output projections, query-context score (N*D) and context vector (N*D).
    expected = b * (3 * n * dim * qkv + n * qkv * dim + 2 * n * qkv)
    assert _macs(XFA(dim, qkv), n, dim) == expected


def test_xfa_cost_is_linear_in_tokens_while_mhsa_is_quadratic():
    n = 1024  # 4N = 4096 tokens: stage 3 of a 1024x1024 input
    xfa_growth = _macs(XFA(144, 96), 4 * n) / _macs(XFA(144, 96), n)
    mhsa = MultiHeadSelfAttention(144, num_heads=4)
    mhsa_growth = _macs(mhsa, 4 * n) / _macs(mhsa, n)
    assert xfa_growth <= 4.2, xfa_growth
    assert mhsa_growth >= 12.0, mhsa_growth  # 16x on the N^2 part, diluted by the linear projections
    attn = [count_macs(mhsa, torch.empty(1, t, 144, device="meta")).attention for t in (n, 4 * n)]
    assert attn[1] == 16 * attn[0]


def _xfa_by_the_equation(m: XFA, x: torch.Tensor) -> torch.Tensor:
    """The docstring equation, one head at a time, with plain tensor ops."""
    B, N, _ = x.shape
    D = m.heads * m.head_dim
    q, k, v = m.qkv(x).split(D, dim=-1)
    outs = []
    for h in range(m.heads):
        cols = slice(h * m.head_dim, (h + 1) * m.head_dim)
        qh = q[..., cols] / q[..., cols].norm(dim=-1, keepdim=True)
        kh = k[..., cols] / k[..., cols].norm(dim=-1, keepdim=True)
        s_n = torch.einsum("bnd,d->bn", qh, m.context_kernel[h]) + m.context_bias[h].reshape(())
        c = torch.einsum("bn,bnd->bd", s_n, kh) / N
        s_d = c * m.feature_kernel[h]
        outs.append(m.temperature[h].reshape(()) * s_d[:, None, :] * v[..., cols])
    return m.proj(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("heads", [1, 3])
def test_xfa_equals_its_equation(heads: int):
    torch.manual_seed(0)
    m = XFA(48, qkv_dim=24, heads=heads).double().eval()
    with torch.no_grad():
        m.temperature.uniform_(0.5, 2.0)
        m.feature_kernel.normal_()
        m.context_bias.normal_()
    x = torch.randn(2, 37, 48, dtype=torch.double)
    torch.testing.assert_close(m(x), _xfa_by_the_equation(m, x), rtol=1e-10, atol=1e-10)


def test_xfa_invariants():
    torch.manual_seed(0)
    m = XFA(32, qkv_dim=16).double().eval()
    x = torch.randn(2, 20, 32, dtype=torch.double)
    perm = torch.randperm(20)
    torch.testing.assert_close(m(x[:, perm]), m(x)[:, perm])  # tokens are a set: permutation equivariant
    # No softmax: the output (before the projection bias) is linear in the temperature lambda.
    bias = m.proj.bias
    base = m(x) - bias
    with torch.no_grad():
        m.temperature.mul_(3.0)
    torch.testing.assert_close(m(x) - bias, 3.0 * base)
    # With context_mean=False the context is the plain sum: N times larger before the projection.
    summed = XFA(32, qkv_dim=16, context_mean=False).double().eval()
    summed.load_state_dict(m.state_dict())
    torch.testing.assert_close(summed(x) - bias, 20 * (m(x) - bias))


def test_xfa_rejects_heads_that_do_not_divide_qkv_dim():
    with pytest.raises(ValueError, match="qkv_dim 96 is not divisible by heads 5"):
        XFA(144, 96, heads=5)


def test_mv3_block_params_and_residual():
    block = MV3Block(16, 32, stride=1, expansion=4)
    # 1x1 16->64 + BN, 3x3 dw 64 + BN, SE 64->16->64 (with biases), 1x1 64->32 + BN.
    assert count_params(block) == 16 * 64 + 128 + 9 * 64 + 128 + (64 * 16 + 16) + (16 * 64 + 64) + 64 * 32 + 64
    assert not block.has_residual and MV3Block(32, 32).has_residual and not MV3Block(32, 32, stride=2).has_residual
    x = torch.randn(1, 32, 8, 8)
    same = MV3Block(32, 32).eval()
    torch.nn.init.zeros_(same.conv3_1x1.bn.weight)  # zero the branch: identity residual remains
    torch.testing.assert_close(same(x), x)


def test_no_weight_decay_names_every_temperature():
    model = _meta_model("xformer_s")
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert len(names) == 2 + 4 + 3 and all(n in params and n.endswith("attn.temperature") for n in names)


@pytest.fixture(scope="module")
def xformer_s() -> torch.nn.Module:
    return timm.create_model("xformer_s").eval()


@pytest.fixture(scope="module")
def xformer_s_features() -> torch.nn.Module:
    return timm.create_model("xformer_s", features_only=True).eval()


@pytest.mark.parametrize("res", [256, 320])
def test_logits_and_features_shapes(res: int, xformer_s: torch.nn.Module, xformer_s_features: torch.nn.Module):
    model, feats = xformer_s, xformer_s_features
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 640)
    assert feats.feature_info.channels() == [32, 64, 96, 128, 160]
    assert feats.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        outs = feats(x)
    expected = [(1, c, res // r, res // r) for c, r in zip((32, 64, 96, 128, 160), (2, 4, 8, 16, 32))]
    assert [tuple(o.shape) for o in outs] == expected


def test_features_at_1024_run_the_4096_token_stage():
    # Stage 3 at 1024x1024: 128x128 map, 2x2 patches -> 4 sequences of N = 4096 tokens through XFA.
    feats = timm.create_model("xformer_s", features_only=True, out_indices=(2,)).eval()
    with torch.no_grad():
        (out,) = feats(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 96, 128, 128) and torch.isfinite(out).all()


def test_sizes_that_are_not_multiples_of_32_are_resized_around_xfa():
    model = timm.create_model("xformer_xxs", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 200)).shape == (2, 7)  # 7x7 / 7x6 maps -> 8x8 / 8x6 tokens


def test_wrong_input_is_named():
    model = timm.create_model("xformer_xxs").eval()
    with pytest.raises(InputShapeError, match=r"expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputShapeError, match=r"expected a 4-D image batch"):
        model(torch.randn(3, 64, 64))


def test_reset_classifier():
    model = timm.create_model("xformer_xxs")
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.num_classes == 5


def test_adamw_steps_lower_the_loss():
    torch.manual_seed(0)
    model = timm.create_model("xformer_xxs", num_classes=4, drop_rate=0.0).train()
    decay = [p for n, p in model.named_parameters() if n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if n in model.no_weight_decay()]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=2e-3)
    x, y = torch.randn(4, 3, 48, 48), torch.randint(0, 4, (4,))
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_output_stride_keeps_weights_and_early_stages(output_stride: int):
    # Dilation changes no parameter: the stride-32 weights load, and stages before the dilated ones agree.
    plain = timm.create_model("xformer_xxs", features_only=True).eval()
    dilated = timm.create_model("xformer_xxs", features_only=True, output_stride=output_stride).eval()
    dilated.load_state_dict(plain.state_dict())
    assert dilated.feature_info.reduction() == [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours, ref = dilated(x), plain(x)
    kept = 3 if output_stride == 16 else 2
    for a, b in zip(ours[:kept + 1], ref[:kept + 1]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert ours[-1].shape[-2:] == (64 // output_stride, 96 // output_stride)
