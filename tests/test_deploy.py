"""Deployment back ends (hybridvit.export.backends): bench --backend side by side with errors, missing
extras, the compile back end."""
from __future__ import annotations

import builtins
import csv
import sys

import pytest
import torch

pytest.importorskip("openvino")

from hybridvit.cli import main
from hybridvit.export.backends import BackendError, compile_runtime, prepare, require


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


def test_unknown_backend_and_missing_extra_are_one_line_errors(monkeypatch, capsys):
    assert main(["bench", "test_efficientnet", "--res", "64", "--backend", "tensorrt"]) == 2
    assert "unknown back end 'tensorrt'; choose one of eager, compile" in capsys.readouterr().err
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(sys.modules, "openvino", raising=False)
    with pytest.raises(BackendError, match=r"needs openvino, which is not installed: pip install 'hybridvit\[openvino\]'"):
        require("openvino", "the openvino back end")


def test_compile_backend_equals_eager():
    """Dynamo's graph capture with its 'eager' compiler: inductor's C++ build took 5 minutes on the
    shared CI cores even for this toy model, and inductor itself is torch's to test."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    runtime = compile_runtime(model, compiler="eager")
    with torch.inference_mode():
        assert runtime.backend == "compile" and runtime.precision == "f32"
        torch.testing.assert_close(runtime(x), model(x))
    assert prepare("compile", model, 8).backend == "compile"
