"""CeiT (spec shared/specs/ceit.md): parameter counts, official key layout, LeFF/LCA behaviour, resolutions."""
from __future__ import annotations

import argparse
import copy
import functools

import pytest
import timm
from timm.optim import param_groups_weight_decay
import torch
import torch.nn as nn
import torch.nn.functional as F

import hybridvit
from hybridvit.bench.flops import count_macs_at, count_params
from hybridvit.checkpoint import read_state_dict
from hybridvit.convert import convert_state_dict
from hybridvit.layers.attention import MultiHeadSelfAttention
from hybridvit.layers.lca import LCA, LCAAttention
from hybridvit.layers.leff import LeFF
from hybridvit.layers.transformer import TransformerLayer
from hybridvit.models.ceit import CeiT, CeiTBlock, CeiTConfig

NAMES = ["ceit_tiny_patch16_224", "ceit_small_patch16_224", "ceit_base_patch16_224",
         "ceit_tiny_patch16_384", "ceit_small_patch16_384"]


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return hybridvit.create_model(name, **kwargs)


@functools.cache
def _tiny_reference() -> nn.Module:
    torch.manual_seed(0)
    return hybridvit.create_model("ceit_tiny_patch16_224").eval()


def _tiny() -> nn.Module:
    """A fresh CeiT-T (copied: building one with its init is slow on a shared CPU)."""
    return copy.deepcopy(_tiny_reference())


@pytest.mark.parametrize(
    "name, expected",
    [("ceit_tiny_patch16_224", 6_356_904), ("ceit_small_patch16_224", 24_204_840),
     ("ceit_base_patch16_224", 94_405_416), ("ceit_tiny_patch16_384", 6_429_864),
     ("ceit_small_patch16_384", 24_350_760)],
)
def test_param_counts_match_official(name: str, expected: int) -> None:
    assert count_params(_meta(name)) == expected


def test_names_not_in_timm_and_registered() -> None:
    assert hybridvit.list_models("ceit") == sorted(NAMES)
    assert all(timm.is_model(n) for n in NAMES)  # registered by us (timm 1.0.31 has no ceit)


def _official_keys(dim: int, depth: int = 12) -> dict[str, tuple[int, ...]]:
    """Official coeusguo/ceit state-dict layout (spec §5), with the shapes that differ from a plain ViT."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 197, dim), "pos_layer_embed": (1, depth, dim),
            "i2t.backbone.conv.weight": (64, 3, 7, 7), "i2t.proj.weight": (dim, 64, 4, 4), "i2t.proj.bias": (dim,)}
    keys |= {f"i2t.backbone.bn.{p}": None for p in bn}
    for i in range(depth):
        b = f"blocks.{i}"
        keys |= {f"{b}.{n}.{p}": None for n in ("norm1", "norm2", "attn.qkv", "attn.proj") for p in ("weight", "bias")}
        keys |= {f"{b}.leff.conv1.weight": (4 * dim, dim, 1, 1), f"{b}.leff.conv2.weight": (4 * dim, 1, 3, 3),
                 f"{b}.leff.conv3.weight": (dim, 4 * dim, 1, 1)}
        keys |= {f"{b}.leff.conv{j}.bias": None for j in (1, 2, 3)}
        keys |= {f"{b}.leff.bn{j}.{p}": None for j in (1, 2, 3) for p in bn}
    for n in ("lca.norm1", "lca.norm2", "lca.attn.qkv", "lca.attn.proj", "lca.feedforward.fc1",
              "lca.feedforward.fc2", "norm", "head"):
        keys |= {f"{n}.weight": None, f"{n}.bias": None}
    return keys


def test_state_dict_has_official_layout() -> None:
    own = _meta("ceit_small_patch16_224").state_dict()
    expected = _official_keys(384)
    assert len(own) == len(expected) == 375
    assert set(own) == set(expected)
    for key, shape in expected.items():
        if shape is not None:
            assert tuple(own[key].shape) == shape, key


def test_official_training_checkpoint_loads_strict(tmp_path) -> None:
    src, ema = _tiny(), _tiny()
    with torch.no_grad():
        ema.head.bias.add_(1.0)
    opt = torch.optim.AdamW(src.parameters())
    path = tmp_path / "checkpoint.pth"
    # The official main.py (DeiT's) saves these entries, `args` being an argparse.Namespace.
    torch.save({"model": src.state_dict(), "model_ema": ema.state_dict(), "optimizer": opt.state_dict(),
                "epoch": 299, "args": argparse.Namespace(model="ceit_tiny_patch16_224", lr=1e-3)}, path)
    x = torch.randn(1, 3, 64, 64)
    loaded = hybridvit.create_model("ceit_tiny_patch16_224", pretrained_path=path).eval()
    plain = _tiny()
    plain.load_state_dict(read_state_dict(path, prefer_ema=False), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ema(x), rtol=0, atol=0)  # hybridvit's loader prefers the EMA
        torch.testing.assert_close(plain(x), src(x), rtol=0, atol=0)  # the weights the paper evaluates


def test_lca_attention_is_last_row_of_full_attention() -> None:
    torch.manual_seed(0)
    lca, full = LCAAttention(96, num_heads=3), MultiHeadSelfAttention(96, num_heads=3)
    full.load_state_dict(lca.state_dict())
    tokens = torch.randn(2, 12, 96)
    torch.testing.assert_close(lca(tokens)[:, 0], full(tokens)[:, -1], rtol=1e-5, atol=1e-6)


def test_lca_block_is_last_row_of_full_transformer_block() -> None:
    torch.manual_seed(0)
    norm = lambda d: nn.LayerNorm(d, eps=1e-6)  # noqa: E731
    lca = LCA(96, 3, mlp_ratio=4.0, norm_layer=norm).eval()
    full = TransformerLayer(96, 3, mlp_ratio=4.0, act_layer=nn.GELU, norm_layer=norm).eval()
    for p in lca.parameters():  # non-trivial norms too
        nn.init.normal_(p, std=0.1)
    state = {k.replace("feedforward.", "mlp."): v for k, v in lca.state_dict().items()}
    full.load_state_dict(state)
    tokens = torch.randn(2, 12, 96)
    torch.testing.assert_close(lca(tokens), full(tokens)[:, -1], rtol=1e-5, atol=1e-6)


def _block_parts(block: CeiTBlock, x: torch.Tensor, grid: tuple[int, int]):
    y = x + block.attn(block.norm1(x))  # after the MSA residual
    return y, block(x, grid)


def _random_bn_stats(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def test_leff_step_adds_normalised_class_token_like_official() -> None:
    torch.manual_seed(0)
    block = CeiTBlock(64, 2).eval()
    _random_bn_stats(block)
    x = torch.randn(2, 1 + 12, 64)
    with torch.no_grad():
        y, out = _block_parts(block, x, (3, 4))
        # Official code: LeFF hands back its input class token, so the residual gives cls + LN2(cls).
        torch.testing.assert_close(out[:, 0], y[:, 0] + block.norm2(y)[:, 0], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(out[:, 0], y[:, 0], atol=1e-3)


def test_leff_cls_bypass_keeps_class_token_and_patch_tokens() -> None:
    torch.manual_seed(0)
    official = CeiTBlock(64, 2).eval()
    bypass = CeiTBlock(64, 2, leff_cls_bypass=True).eval()
    _random_bn_stats(official)
    bypass.load_state_dict(official.state_dict())
    x = torch.randn(2, 1 + 12, 64)
    with torch.no_grad():
        y, out = _block_parts(bypass, x, (3, 4))
        torch.testing.assert_close(out[:, 0], y[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 1:], official(x, (3, 4))[:, 1:], rtol=0, atol=0)


def test_leff_final_act_is_paper_gelu_on_patch_tokens() -> None:
    torch.manual_seed(0)
    official, paper = LeFF(32, 128).eval(), LeFF(32, 128, final_act=True).eval()
    _random_bn_stats(official)
    paper.load_state_dict(official.state_dict())
    x = torch.randn(2, 1 + 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(paper(x, (4, 4))[:, 1:], F.gelu(official(x, (4, 4))[:, 1:]))
        torch.testing.assert_close(paper(x, (4, 4))[:, 0], x[:, 0])


def test_leff_restores_tokens_row_major_on_non_square_grid() -> None:
    # 1x1 convs = identity, depthwise kernel picks the left neighbour: output(r, c) = input(r, c - 1).
    leff = LeFF(4, 4, with_bn=False, act_layer=nn.Identity)
    with torch.no_grad():
        for conv in (leff.conv1, leff.conv3):
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            conv.bias.zero_()
        leff.conv2.weight.zero_()
        leff.conv2.weight[:, 0, 1, 0] = 1.0
        leff.conv2.bias.zero_()
        grid = torch.randn(1, 2, 3, 4)  # [B, h, w, D]
        out = leff(torch.cat((torch.randn(1, 1, 4), grid.flatten(1, 2)), dim=1), (2, 3))
    expected = torch.cat((torch.zeros(1, 2, 1, 4), grid[:, :, :-1]), dim=2)
    torch.testing.assert_close(out[:, 1:].view(1, 2, 3, 4), expected)


@pytest.mark.parametrize("name, res, batch, stem, tokens", [("ceit_tiny_patch16_224", 224, 2, 56, 197),
                                                            ("ceit_tiny_patch16_384", 384, 1, 96, 577)])
def test_shapes(name: str, res: int, batch: int, stem: int, tokens: int) -> None:
    torch.manual_seed(0)
    model = _tiny() if name == "ceit_tiny_patch16_224" else hybridvit.create_model(name).eval()
    seen = {}
    model.i2t.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", tuple(o.shape)))
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", tuple(o.shape)))
    with torch.no_grad():
        feats = model.forward_features(torch.randn(batch, 3, res, res))
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
    assert seen == {"stem": (batch, 64, stem, stem), "tokens": (batch, tokens, 192)}
    assert feats.shape == (batch, 12, 192) and pooled.shape == (batch, 192) and logits.shape == (batch, 1000)
    # logits = head(LN(LCA(class tokens + layer position embedding)))
    expected = model.head(model.norm(model.lca(feats + model.pos_layer_embed)))
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_224_model_runs_at_384_with_577_tokens() -> None:
    model = _tiny()
    seen = []
    model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 384, 384))
    assert seen == [(1, 577, 192)] and logits.shape == (1, 1000)
    assert model.pos_embed.shape == (1, 197, 192)  # interpolated on the fly, the parameter is untouched


def test_load_time_and_run_time_interpolation_agree(tmp_path) -> None:
    src = _tiny()
    path = tmp_path / "ceit_t224.pth"
    torch.save({"model": src.state_dict()}, path)
    at384 = hybridvit.create_model("ceit_tiny_patch16_384", pretrained_path=path)
    resized = _tiny()
    resized.set_input_size(384)
    assert at384.pos_embed.shape == resized.pos_embed.shape == (1, 577, 192) and resized.grid_size == (24, 24)
    torch.testing.assert_close(at384.pos_embed, resized.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(at384.pos_embed[:, 0], src.pos_embed[:, 0], rtol=0, atol=0)  # class row kept
    # Same three ways at a cheaper size (6x8 tokens): loaded into a 96x128 model, resized, on the fly.
    loaded = hybridvit.create_model("ceit_tiny_patch16_224", img_size=(96, 128), pretrained_path=path).eval()
    resized = _tiny()
    resized.set_input_size((96, 128))
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        on_the_fly = src(x)
        torch.testing.assert_close(resized(x), on_the_fly, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(x), on_the_fly, rtol=1e-5, atol=1e-5)


def test_timm_pretrained_file_is_resampled(tmp_path) -> None:
    src = _tiny()
    path = tmp_path / "ceit_t224.pth"
    torch.save(src.state_dict(), path)
    model = timm.create_model("ceit_tiny_patch16_384", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.pos_embed.shape == (1, 577, 192)


def test_convert_state_dict_resamples_only_pos_embed() -> None:
    src, dst = _meta("ceit_tiny_patch16_224").state_dict(), _meta("ceit_tiny_patch16_384")
    src = {k: torch.zeros(v.shape) for k, v in src.items()}
    out = convert_state_dict(dst, src)
    assert out["pos_embed"].shape == (1, 577, 192)
    assert all(out[k] is src[k] for k in src if k != "pos_embed")


def test_non_square_input_and_size_error() -> None:
    model = _tiny()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1000)
    with pytest.raises(hybridvit.InputShapeError, match="at least 16x16 pixels.*got 8x64"):
        model(torch.randn(1, 3, 8, 64))
    with pytest.raises(hybridvit.InputShapeError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 64, 64))


def test_checkpoint_of_other_width_is_rejected(tmp_path) -> None:
    path = tmp_path / "small.pth"
    torch.save({"model": {k: torch.zeros(v.shape) for k, v in _meta("ceit_small_patch16_224").state_dict().items()}},
               path)
    with pytest.raises(hybridvit.CheckpointError, match="does not fit model.*shape mismatches"):
        hybridvit.create_model("ceit_tiny_patch16_224", pretrained_path=path)


def test_features_only_gives_stride_16_maps() -> None:
    torch.manual_seed(0)
    model = timm.create_model("ceit_tiny_patch16_224", features_only=True).eval()
    assert model.feature_info.module_name() == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]
    assert model.feature_info.reduction() == [16] * 4 and model.feature_info.channels() == [192] * 4
    with torch.no_grad():
        feats = model(torch.randn(2, 3, 96, 128))
    assert [tuple(f.shape) for f in feats] == [(2, 192, 6, 8)] * 4
    with torch.device("meta"):
        early = timm.create_model("ceit_tiny_patch16_224", features_only=True, out_indices=(0, 1))
    assert len(early.model.blocks) == 2  # blocks after the last wanted one are pruned


def test_forward_intermediates_match_block_outputs() -> None:
    model = _tiny()
    x = torch.randn(1, 3, 64, 64)
    outs = []
    model.blocks[3].register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        final, (inter,) = model.forward_intermediates(x, indices=[3])
        tokens = model.forward_intermediates(x, indices=[3], output_fmt="NLC", intermediates_only=True)[0]
        torch.testing.assert_close(final, model.forward_features(x))
    torch.testing.assert_close(inter.flatten(2).transpose(1, 2), outs[0][:, 1:])
    torch.testing.assert_close(tokens, outs[0][:, 1:])


def test_no_weight_decay_follows_official_recipe() -> None:
    model = _meta("ceit_tiny_patch16_224")
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    groups = param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.pos_layer_embed) in decayed and id(model.pos_embed) not in decayed


def test_paper_variant_switches() -> None:
    model = _meta("ceit_tiny_patch16_224", i2t_chans=32, layer_pos_embed=False)
    assert model.pos_layer_embed is None and model.i2t.proj.weight.shape == (192, 32, 4, 4)
    assert count_params(model) == 6_356_904 - 12 * 192 - 64 * 3 * 49 // 2 - 64 - 192 * 32 * 16


def test_macs_without_attention_near_paper() -> None:
    macs = count_macs_at(_meta("ceit_tiny_patch16_384"), 384)
    assert macs.without_attention == pytest.approx(3.6e9, rel=0.02)  # paper: 3.6 GFLOPs (counted as MACs)
    assert macs.total == pytest.approx(5.1e9, rel=0.02)


def test_training_steps_lower_loss() -> None:
    torch.manual_seed(0)
    # A narrow, shallow CeiT (all CeiT parts, BN in training mode, drop path) on 32x32 images: 2x2 tokens.
    model = CeiT(CeiTConfig(embed_dim=64, num_heads=2, img_size=32, depth=4), num_classes=5, drop_path_rate=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 5
    opt = torch.optim.AdamW(model.train().parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
