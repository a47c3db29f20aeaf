"""Deployment back ends: OpenVINO IR export, INT8 with an accuracy check, eval/predict/bench --backend,
train/eval --compile, missing extras. One tiny training run and one export of it (OpenVINO IR plus its
INT8 copy) are shared by the whole module: a dynamo export costs 15+ s per model."""
from __future__ import annotations

import builtins
import csv
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from hybridvit.cli import build_parser, main
from hybridvit.data.datasets import DigitsDataset
from hybridvit.engine.inference import load_trained
from hybridvit.export import export_model
from hybridvit.export.backends import (
    BackendError, compile_runtime, max_error, open_exported, openvino_bf16_supported, openvino_runtime, prepare, require,
)

MODEL = "hv_mobilevit_xxs"


@pytest.fixture(scope="module")
def run_dir(digits_backbone):
    """The session's digits run (conftest.py): the main job's model, classes and 32x32 input; only read here."""
    return digits_backbone


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """The run exported once as OpenVINO IR and quantized to INT8 by the CLI (dynamic H/W is left out: at
    32x32 MobileViT's last feature map is 1x1 and the graph does not verify at 64)."""
    path = tmp_path_factory.mktemp("ir") / "digits.xml"
    argv = ["export", str(run_dir), "--format", "openvino", "--out", str(path),
            "--quantize", "int8", "--calibration", "digits", "--calibration-size", "8"]
    assert main(argv) == 0
    return path, path.with_name("digits_int8.xml")


def test_openvino_ir_matches_eager_at_other_batches(run_dir, exported):
    path, int8_path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["digits.bin", "digits.xml", "digits_int8.bin", "digits_int8.xml"]
    model = load_trained(str(run_dir)).model
    runtime = open_exported(path)
    assert runtime.backend == "openvino" and runtime.precision == "f32"  # the hint is explicit, and read back
    err, _ = max_error(model, runtime, [torch.randn(b, 3, 32, 32) for b in (2, 3, 1)])  # exported at batch 2
    assert err <= 1e-4


def test_openvino_export_keeps_dynamic_hw_where_it_verifies(tmp_path):
    """A toy CNN (dynamo export of a real model costs 15+ s): checked at batch 3 and at 32x32 and 96x96, like ONNX."""
    class Toy(torch.nn.Module):  # the exporter names dynamic dims by forward's argument, `x`
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.conv(x).relu().mean((2, 3)))

    result = export_model("toy", "openvino", out=tmp_path / "m.xml", res=64, dynamic=True, model=Toy())
    assert result.dynamic_batch and result.dynamic_hw and result.max_error <= 1e-4
    assert result.checked_shapes == [(2, 3, 64, 64), (3, 3, 64, 64), (3, 3, 32, 32), (3, 3, 96, 96)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no partial files left


def test_int8_ir_runs_int8_and_eval_reports_top1_against_float(run_dir, exported, capsys):
    _, int8_path = exported
    runtime = open_exported(int8_path)
    assert runtime.precision.startswith("int8 (") and runtime.precision.endswith(") + f32")
    assert int(runtime.precision.split("(")[1].split()[0]) > 0  # convolutions / matmuls the plugin runs in int8
    assert main(["eval", "--checkpoint", str(run_dir), "--exported", str(int8_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("360 images at 32px, eager f32: top-1")
    assert lines[1].startswith("360 images at 32px, openvino int8") and str(int8_path) in lines[1]
    eager, int8 = (float(line.split("top-1 ")[1].split("%")[0]) for line in lines[:2])
    assert lines[2].startswith("top-1 openvino int8") and lines[2].endswith(f"vs eager f32: {int8 - eager:+.2f} points")


def _conv_biases(path) -> list[np.ndarray]:
    """The constant added to each convolution's output in an IR (its bias), in graph order."""
    import openvino as ov

    biases = []
    for op in ov.Core().read_model(str(path)).get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            adds = [t.get_node() for t in op.output(0).get_target_inputs() if t.get_node().get_type_name() == "Add"]
            biases += [add.input_value(1).get_node().get_data() for add in adds]
    return biases


def test_nncf_int8_keeps_the_float_biases(exported):
    """NNCF's fast bias correction is off: on the README digits model it moved the stem's bias by up to 0.17
    and cost 1.39 points of top-1 (0.28 without it; docs/export.md, INT8)."""
    path, int8_path = exported
    float_biases, int8_biases = _conv_biases(path), _conv_biases(int8_path)
    assert len(float_biases) == len(int8_biases) == 32  # MobileViT-XXS: every convolution has its BN folded in
    for a, b in zip(float_biases, int8_biases):
        np.testing.assert_array_equal(a, b)


def test_calibration_subset_is_fixed_by_its_seed():
    from timm.data import create_transform

    from hybridvit.export.quantize import calibration_images

    transform = create_transform(32, mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0)
    first, again, other = (torch.cat(calibration_images("digits", transform, 4, seed)) for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_onnxruntime_int8_keeps_attention_matmuls_float(tmp_path):
    """A toy attention block (the TorchScript-based exporter: seconds, not a dynamo export): its linear layers
    run int8, the two activation x activation MatMuls (scores, weighted sum) stay float."""
    import onnx

    from hybridvit.export.onnx import INPUT_NAME
    from hybridvit.export.quantize import attention_matmuls, quantize_onnxruntime

    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.qkv, self.fc = torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.Linear(16, 48), torch.nn.Linear(16, 5)

        def forward(self, x):
            tokens = self.conv(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(tokens).chunk(3, dim=-1)
            return self.fc(((q @ k.transpose(1, 2)).softmax(-1) @ v).mean(1))

    model, float_path = Attention().eval(), tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), str(float_path), input_names=[INPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}}, dynamo=False)
    int8_path = quantize_onnxruntime(float_path, [torch.rand(1, 3, 16, 16) for _ in range(8)], tmp_path / "m_int8.onnx")
    graph = onnx.load(str(int8_path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    dequantized = [n.name for n in matmuls if any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(attention_matmuls(float_path)) == 2 and len(matmuls) == 4
    assert len(dequantized) == 2 and not set(dequantized) & set(attention_matmuls(float_path))
    x = torch.rand(2, 3, 16, 16)
    err, _ = max_error(model, open_exported(int8_path), [x])
    assert open_exported(int8_path).precision == "int8 (QDQ) + f32" and err < 0.1


def test_predict_on_an_exported_model_matches_eager(run_dir, exported, tmp_path, capsys):
    path, _ = exported
    image, _ = DigitsDataset("val")[0]
    image.save(tmp_path / "digit.png")
    outputs = []
    for extra in ([], ["--exported", str(path)]):
        assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "digit.png"), "--topk", "3", *extra]) == 0
        outputs.append(capsys.readouterr().out.splitlines())
    assert [line.split("%")[1] for line in outputs[0][1:]] == [line.split("%")[1] for line in outputs[1][1:]]
    assert np.allclose([float(line.split("%")[0]) for line in outputs[0][1:]],
                       [float(line.split("%")[0]) for line in outputs[1][1:]], atol=0.02)


def test_bf16_runs_where_the_cpu_has_it_and_says_so_where_not(exported):
    path, _ = exported
    if openvino_bf16_supported():
        assert openvino_runtime(path, "bf16", "openvino-bf16").precision == "bf16"
    else:
        with pytest.raises(BackendError, match="no bf16 support"):
            openvino_runtime(path, "bf16", "openvino-bf16")


def test_openvino_precision_hint_is_always_explicit(exported, monkeypatch):
    """OpenVINO's CPU default is bf16 on AMX / AVX-512 BF16 machines: f32 must be asked for by name."""
    import openvino as ov

    configs = []
    real = ov.Core.compile_model
    monkeypatch.setattr(ov.Core, "compile_model",
                        lambda self, model, device, config: configs.append(config) or real(self, model, device, config))
    open_exported(exported[0])
    assert configs[0]["INFERENCE_PRECISION_HINT"] == "f32" and configs[0]["INFERENCE_NUM_THREADS"] == torch.get_num_threads()


def test_boolean_masks_are_not_counted_as_int8_layers():
    """OpenVINO runs a boolean tensor (here an output mask) as a u8 Convert: a float graph with one reports f32."""
    import openvino as ov
    from openvino import opset13 as ops

    x = ops.parameter([2, 16], np.float32)
    logits = ops.matmul(x, ops.constant(np.ones((16, 4), np.float32)), False, False)
    model = ov.Model([logits, ops.greater(x, ops.constant(np.float32(0)))], [x])
    assert openvino_runtime(model).precision == "f32"


def test_bench_times_back_ends_side_by_side_with_errors(tmp_path):
    """On timm's tiny test model (its ONNX export takes seconds): rows, ratios, errors and the plot."""
    out = tmp_path / "bench"
    argv = ["bench", "test_efficientnet", "--res", "64", "--rounds", "2", "--warmup", "1", "--no-memory", "--out", str(out),
            "--backend", "eager", "onnxruntime", "openvino"]
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["backend"] for r in rows] == ["eager", "onnxruntime", "openvino"]
    assert rows[0]["vs_eager"] == "1.0" and rows[0]["max_err"] == ""
    for r in rows[1:]:
        assert r["precision"] == "f32" and float(r["max_err"]) <= 1e-4 and float(r["vs_eager"]) > 0
    assert (out / "backends.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_back_end_flags_are_one_line_errors(monkeypatch, capsys, run_dir):
    assert main(["eval", "--checkpoint", str(run_dir), "--backend", "tensorrt"]) == 2
    assert "unknown back end 'tensorrt'; choose one of eager, compile" in capsys.readouterr().err
    assert main(["export", MODEL, "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "--quantize int8 needs --format openvino (NNCF) or onnx (onnxruntime), not torchscript" in capsys.readouterr().err
    assert main(["export", MODEL, "--task", "detection", "--quantize", "int8"]) == 2
    assert "--quantize int8 quantizes classifiers; detectors export as float ONNX" in capsys.readouterr().err
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    with pytest.raises(BackendError, match=r"needs openvino, which is not installed: pip install 'hybridvit\[openvino\]'"):
        require("openvino", "the openvino back end")


def _fake_run(folder, task: str, model=None):
    """A run directory as `train` leaves it (run.json, best.safetensors), without the training."""
    import json

    from safetensors.torch import save_file

    folder.mkdir()
    info = {"task": task, "model": MODEL, "head": "deeplabv3" if task == "segmentation" else "ssdlite", "num_classes": 3,
            "classes": ["background", "a", "b"], "img_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}
    (folder / "run.json").write_text(json.dumps(info))
    if model is not None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best.safetensors"))
    return folder


def test_quantize_refuses_segmenters_and_detectors_in_one_line(tmp_path, capsys):
    message = "--quantize int8 quantizes classifiers; detectors export as float ONNX, segmenters as float ONNX or OpenVINO IR"
    for target in (_fake_run(tmp_path / "seg", "segmentation"), _fake_run(tmp_path / "det", "detection"), "deeplabv3:" + MODEL):
        assert main(["export", str(target), "--format", "openvino", "--quantize", "int8"]) == 2
        assert capsys.readouterr().err.strip() == f"hybridvit: error: {message}"


def test_a_segmentation_run_exports_its_segmenter(tmp_path, monkeypatch):
    """Its head, backbone, classes, input size and weights (the export itself is tested in test_segmentation_heads.py)."""
    from types import SimpleNamespace

    import hybridvit.export.api as api
    from hybridvit.tasks import create_segmenter

    trained = create_segmenter("deeplabv3", MODEL, 3)
    run = _fake_run(tmp_path / "seg", "segmentation", trained)
    calls = []
    monkeypatch.setattr(api, "export_model", lambda name, fmt, **kw: calls.append((name, fmt, kw)) or SimpleNamespace(
        path=kw["out"], format=fmt, input_shape=(2, 3, 64, 64), dynamic_batch=True, dynamic_hw=False, max_error=None, notes=[]))
    assert main(["export", str(run), "--format", "openvino"]) == 0
    (name, fmt, kw), = calls
    assert (name, fmt, kw["res"], kw["out"]) == ("deeplabv3:" + MODEL, "openvino", 64, run / f"deeplabv3_{MODEL}.xml")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(kw["model"].state_dict()[key], value)


def test_train_compile_compiles_the_model_after_the_ema_copy(tmp_path, monkeypatch):
    """Wiring only (inductor on a real model costs minutes here): `--compile` compiles the trained model in
    place, and the EMA copy stays eager."""
    from hybridvit.engine.train import TrainConfig, Trainer

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    trainer = Trainer(TrainConfig(MODEL, output=str(tmp_path), compile=True, ema_decay=0.99, limit=16, batch_size=8, progress=False))
    assert compiled == [trainer.model] and trainer.ema.module is not trainer.model
    assert build_parser().parse_args(["train", "--model", MODEL, "--compile"]).compile


def test_compile_backend_equals_eager():
    """Dynamo's graph capture with its 'eager' compiler: inductor's C++ build took 5 minutes on the
    shared CI cores even for this toy model, and inductor itself is torch's to test."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    runtime = compile_runtime(model, compiler="eager")
    with torch.inference_mode():
        assert runtime.backend == "compile" and runtime.precision == "f32"
        torch.testing.assert_close(runtime(x), model(x))
    assert prepare("compile", model, 8).backend == "compile"  # what bench / eval get
