"""Export: ONNX (checked with onnxruntime at another batch), TorchScript, Core ML, BN folding."""
from __future__ import annotations

import os
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import hybridvit
from hybridvit.cli import main
from hybridvit.errors import HybridViTError
from hybridvit.export import ExportError, export_model, fuse_bn
from hybridvit.export.coreml import coreml_available
from hybridvit.export.fuse_bn import count_batchnorms
from hybridvit.export.onnx import session_with_cut_orders
from hybridvit.export.torchscript import load_torchscript
from hybridvit.layers.clustering import balanced_hierarchical_clustering, replay_cuts
from hybridvit.models.boat import BoatConfig, BoatTransformer

MODELS = hybridvit.list_models()
# ONNX export costs 15 s (MobileViT) to 150 s (BOAT-CSWin-B) of CPU per model, 15+ minutes for all.
# The default run exports the smallest model of each family (MoCoViT-D too: its DyReLU is its own
# code path), BOAT as a narrow BOAT-Swin with one FSLA block (test_boat_onnx_matches_eager_at_its_size;
# BOAT-Swin-T took 117 s); HYBRIDVIT_EXPORT_ALL=1 exports every registered model.
ONNX_MODELS = MODELS if os.environ.get("HYBRIDVIT_EXPORT_ALL") else [
    "hv_mobilevit_xxs", "xformer_xxs", "ceit_tiny_patch16_224", "mocovit_050", "mocovit_d_050",
]


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that folding has something to fold."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _ort_run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def test_onnx_models_cover_every_family():
    families = {hybridvit.paper_entry(n).family for n in MODELS}
    assert {hybridvit.paper_entry(n).family for n in ONNX_MODELS} | {"boat"} == families  # boat: below


def _narrow_boat_swin() -> nn.Module:
    """BOAT-Swin's classes with one FSLA block (stage 1's shifted block) at 1/12 of BOAT-Swin-T's width."""
    torch.manual_seed(0)
    return BoatTransformer(BoatConfig("swin", 8, (2, 1, 1, 1), (1, 1, 2, 2), 0.0), num_classes=10).eval()


def test_boat_onnx_matches_eager_at_its_size(tmp_path):
    """BOAT exports one size at a time (the clustering depth follows the token count); the graph's cluster
    orders are replayed in eager (near-tie cuts, see test_onnx_matches_eager_at_another_batch). At 96x96 stage 1
    has 576 tokens, not 49 * 2^L: FSLA pads its groups and Swin its windows (one export: ~130 s on the shared
    CPU; the unpadded 224 path is exported by HYBRIDVIT_EXPORT_ALL=1 with the registered models)."""
    res, model = 96, _narrow_boat_swin()
    result = export_model("boat", "onnx", out=tmp_path / "b.onnx", res=res, batch=2, model=model)
    assert result.dynamic_batch and not result.dynamic_hw and result.input_shape == (2, 3, res, res)
    session = session_with_cut_orders(result.path)
    for batch in (3, 1):
        x = torch.randn(batch, 3, res, res)
        got, *orders = session.run(None, {"image": x.numpy()})
        assert len(orders) == 4  # one sort (TopK) per clustering level of the FSLA block (576 tokens: 4 levels)
        with torch.inference_mode(), replay_cuts(torch.from_numpy(order) for order in orders):
            expected = model(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_boat_dynamic_export_is_refused_in_one_line(tmp_path):
    with pytest.raises(ExportError, match=r"--dynamic \(dynamic H/W\) is not possible for boat: BOAT's FSLA clusters"):
        export_model("boat", "onnx", out=tmp_path / "b.onnx", res=96, dynamic=True, model=_narrow_boat_swin())
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_onnx_matches_eager_at_another_batch(name, tmp_path):
    """BOAT's graph also outputs its cluster orders, which eager replays: near-tie tokens can cross a
    median cut under float32 rounding (hybridvit.export.onnx.onnx_max_error), in eager fp32 vs fp64 too."""
    torch.manual_seed(0)
    model = hybridvit.create_model(name).eval()
    res = hybridvit.paper_entry(name).input_size
    result = export_model(name, "onnx", out=tmp_path / "m.onnx", batch=2, model=model)
    assert result.dynamic_batch and result.input_shape == (2, 3, res, res)
    session = session_with_cut_orders(result.path)
    for batch in (2, 3, 1):  # the batch 2, then batches it was not exported with
        x = torch.randn(batch, 3, res, res)
        got, *orders = session.run(None, {"image": x.numpy()})
        assert bool(orders) == (hybridvit.paper_entry(name).family == "boat")
        with torch.inference_mode(), replay_cuts(torch.from_numpy(order) for order in orders):
            expected = model(x).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


class _Clustering(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return balanced_hierarchical_clustering(x, levels=6)[0]


def test_fsla_clustering_is_the_same_in_onnxruntime(tmp_path):
    """FSLA's median cut is discontinuous: with the clustering in float32, onnxruntime's rounding put
    near-tie tokens into the other group on 9 of 20 such inputs (BOAT-Swin-T stage-1 sizes)."""
    x = torch.randn(12, 3136, 32, generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(_Clustering().eval(), (x,), dynamo=True, optimize=False, verbose=False, report=False)
    program.save(str(tmp_path / "clustering.onnx"))
    session = ort.InferenceSession(str(tmp_path / "clustering.onnx"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for seed in range(8):
        x = torch.randn(12, 3136, 32, generator=torch.Generator().manual_seed(seed))
        got = session.run(None, {input_name: x.numpy()})[0]
        np.testing.assert_array_equal(got, _Clustering()(x).numpy())


class _EagerCutsElsewhere(nn.Module):
    """Orders its 64 pixels by clustering; eager clusters another key than the exported graph does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # [B, 64, 3]
        key = tokens if torch.compiler.is_exporting() else tokens.roll(1, dims=1)  # token i gets i-1's key
        perm, _ = balanced_hierarchical_clustering(key, levels=2)
        return tokens.gather(1, perm.unsqueeze(-1).expand(-1, -1, 3)).flatten(1)


def test_onnx_check_replays_the_graphs_cuts_and_notes_the_unreplayed_error(tmp_path):
    result = export_model("cuts", "onnx", out=tmp_path / "c.onnx", res=8, model=_EagerCutsElsewhere())
    assert result.max_error < 1e-6  # with the graph's cluster orders, eager computes the same
    assert len(result.notes) == 1 and "FSLA cluster orders replayed in eager; without them max error" in result.notes[0]


@pytest.mark.parametrize("name", MODELS)
def test_bn_folding_keeps_outputs(name):
    torch.manual_seed(0)
    model = _randomize_bn(hybridvit.create_model(name))
    res = hybridvit.paper_entry(name).input_size  # the one size every model accepts
    batchnorms = count_batchnorms(model)  # 0 for BOAT, which uses LayerNorm only
    fused = fuse_bn(model, torch.randn(2, 3, res, res))
    assert count_batchnorms(fused) < batchnorms or batchnorms == 0
    x = torch.randn(3, 3, res, res)  # not the batch the pairs were found with
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x), rtol=0, atol=1e-5)
    assert count_batchnorms(model) == batchnorms  # the original is left untouched


def test_bn_folding_removes_every_mobilevit_batchnorm():
    model = _randomize_bn(hybridvit.create_model("hv_mobilevit_xxs"))
    assert count_batchnorms(model) == 32
    assert count_batchnorms(fuse_bn(model, torch.randn(1, 3, 64, 64))) == 0


class _ConvBnShared(nn.Module):
    """The conv output feeds the BN and a skip: folding the BN would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_bn_folding_refuses_a_conv_output_used_twice():
    model = _randomize_bn(_ConvBnShared())
    with pytest.raises(HybridViTError, match="BatchNorm folding changed the outputs"):
        fuse_bn(model, torch.randn(1, 3, 8, 8))


class _Fcn(nn.Module):
    """Fully convolutional: any H/W works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class _Branchy(_Fcn):
    """Takes a different path when W is a multiple of 64: torch.export bakes the branch in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[-1] % 32 == 0:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def test_dynamic_hw_claimed_only_when_it_verifies(tmp_path):
    fcn = _Fcn().eval()
    ok = export_model("fcn", "onnx", out=tmp_path / "fcn.onnx", res=64, dynamic=True, model=fcn)
    assert ok.dynamic_hw and not ok.notes
    x = torch.randn(1, 3, 40, 72)  # a batch, height and width it was not exported with
    with torch.inference_mode():
        np.testing.assert_allclose(_ort_run(ok.path, x), fcn(x).numpy(), rtol=0, atol=1e-5)
    branchy = _Branchy().eval()
    fixed = export_model("branchy", "onnx", out=tmp_path / "b.onnx", res=64, dynamic=True, model=branchy)
    assert not fixed.dynamic_hw
    assert "dynamic H/W did not verify" in fixed.notes[0] and "exported fixed 64x64" in fixed.notes[0]
    with pytest.raises(Exception):  # fixed H/W: onnxruntime rejects other sizes instead of computing garbage
        _ort_run(fixed.path, torch.randn(1, 3, 96, 96))


def test_mobilevit_onnx_keeps_height_and_width_dynamic(tmp_path):
    """MobileViT resizes odd feature maps before unfolding; the exported graph always resizes (an exact
    copy at the same size), so one graph serves 256 (8x8 at stride 32), 224 (7x7) and 250x270."""
    torch.manual_seed(0)
    model = hybridvit.create_model("hv_mobilevit_xxs").eval()
    result = export_model("hv_mobilevit_xxs", "onnx", out=tmp_path / "m.onnx", dynamic=True, model=model)
    assert result.dynamic_hw and not result.notes
    assert (3, 3, 224, 224) in result.checked_shapes
    x = torch.randn(1, 3, 250, 270)
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(_ort_run(result.path, x), expected, rtol=0, atol=1e-4)


def test_torchscript_cli_export_runs_at_another_batch(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "hv_mobilevit_xxs", "--format", "torchscript", "--res", "64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (torchscript, exported at 2x3x64x64; dynamic batch, fixed 64x64)" in printed
    assert "checked against eager at 2x3x64x64, 3x3x64x64: max error" in printed
    traced = load_torchscript(out)
    model = hybridvit.create_model("hv_mobilevit_xxs").eval()
    model.load_state_dict(traced.state_dict())
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-5)


def test_coreml_is_optional(tmp_path):
    if coreml_available():
        pytest.skip("coremltools is installed; the missing-package message cannot be shown")
    with pytest.raises(HybridViTError, match=r"needs coremltools.*pip install 'hybridvit\[coreml\]'"):
        export_model("hv_mobilevit_xxs", "coreml", out=tmp_path / "m.mlpackage", res=64)


def test_export_at_a_size_the_model_rejects_gives_its_error(tmp_path, capsys):
    """BOAT below 32x32: the model's InputShapeError, one line, before torch.export traces anything."""
    out = tmp_path / "b.onnx"
    assert main(["export", "boat_swin_tiny", "--format", "onnx", "--res", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "BOAT needs inputs of at least 32x32" in err and not out.exists()


def test_cli_errors_are_one_line(capsys):
    assert main(["export", "hv_mobilevit_xxs", "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hybridvit: error: unsupported export format 'tflite'; choose one of onnx, openvino, torchscript, coreml"
    assert main(["export", "hv_mobilevit_xxx", "--format", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown model 'hv_mobilevit_xxx'" in err and "hv_mobilevit_xxs" in err
    with pytest.raises(ExportError):
        export_model("hv_mobilevit_xxs", "tflite")
