"""`hybridvit bench`: files and columns (not timings), peak-memory measurement, clear errors."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn

import hybridvit
from hybridvit.bench.measure import peak_memory_bytes, time_side_by_side
from hybridvit.bench.runner import COLUMNS, PEERS, BenchConfig, resolve_models, run_bench
from hybridvit.cli import main
from hybridvit.errors import HybridViTError, UnknownModelError


def test_bench_cli_writes_table_csv_json_and_plots(tmp_path, capsys):
    ours = "hv_mobilevit_xxs"
    out = tmp_path / "bench"
    argv = [ours, "deit_tiny_patch16_224", "--res", "64", "224", "--batch", "1", "2", "--rounds", "2",
            "--warmup", "1", "--markdown", "--out", str(out)]
    assert main(["bench", *argv]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and "latency ms (median)" in printed and "skipped: fixed input size 224" in printed

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 2 * 2 * 2  # models x resolutions x batches, skipped ones included
    measured = [r for r in rows if not r["note"]]
    assert {(r["model"], r["res"]) for r in measured} == {(ours, "64"), (ours, "224"), ("deit_tiny_patch16_224", "224")}
    for r in measured:
        assert float(r["latency_ms"]) > 0 and float(r["latency_p90_ms"]) >= float(r["latency_ms"])
        assert float(r["peak_mem_mb"]) > 0 and float(r["gmacs"]) >= float(r["gmacs_no_attn"]) > 0
        assert r["threads"] == "1" and r["device"] == "cpu"
    skipped = [r for r in rows if r["note"]]
    assert {(r["model"], r["res"]) for r in skipped} == {("deit_tiny_patch16_224", "64")}
    assert all(r["latency_ms"] == "" for r in skipped)

    payload = json.loads((out / "results.json").read_text())
    assert payload["columns"] == list(COLUMNS) and len(payload["rows"]) == 8
    assert payload["environment"]["threads"] == 1
    deit = [r for r in payload["rows"] if r["model"] == "deit_tiny_patch16_224" and r["res"] == 224]
    assert deit[0]["source"] == "timm" and deit[0]["params_m"] == pytest.approx(5.717, abs=1e-3)
    for png in ("latency.png", "memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("Measured ") and "1 thread(s)" in markdown and "\n| model" in markdown


def test_macs_grow_with_resolution_and_match_counter(tmp_path):
    rows = run_bench(["hv_mobilevit_xxs"], BenchConfig(resolutions=(64, 128), batches=(1,), warmup=0, rounds=1),
                     log=lambda msg: None)
    small, large = rows
    assert (small.res, large.res) == (64, 128)
    # Convolutions scale with pixels (x4); attention over N = pixels/4 tokens grows faster.
    assert 3.5 < large.gmacs_no_attn / small.gmacs_no_attn < 4.5
    assert small.params_m == pytest.approx(1.272, abs=1e-3)


class _TwoBuffers(nn.Module):
    """Holds two 4 MiB tensors at once during forward, then frees them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(1 << 20)
        b = a * 2
        return (b.sum() + x.sum()).reshape(1)


def test_cpu_peak_memory_counts_live_tensors():
    x = torch.zeros(4)
    peak = peak_memory_bytes(_TwoBuffers(), x)
    assert 8 << 20 <= peak < (8 << 20) + 4096
    assert peak_memory_bytes(_TwoBuffers(), x) == peak  # repeatable


def test_side_by_side_timing_reports_each_model():
    timings = time_side_by_side([(nn.Identity(), torch.zeros(8)), (nn.ReLU(), torch.zeros(8))], warmup=1, rounds=3)
    assert len(timings) == 2 and all(0 < t.median_ms <= t.p90_ms for t in timings)


def test_peers_are_timm_models_and_names_are_checked():
    names = resolve_models(["hv_mobilevit_xxs", "mobilevit_xxs"], peers=True)
    assert names[:2] == ["hv_mobilevit_xxs", "mobilevit_xxs"] and len(names) == 1 + len(PEERS)
    assert resolve_models([], all_models=True) == hybridvit.list_models()
    with pytest.raises(UnknownModelError, match="did you mean hv_mobilevit_xxs"):
        resolve_models(["hv_mobilevit_xxz"])


def test_bench_cli_unknown_model_is_one_line(capsys, tmp_path):
    assert main(["bench", "no_such_net_12", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hybridvit: error: unknown model 'no_such_net_12'")
    assert main(["bench", "--out", str(tmp_path)]) == 2
    assert "no models to benchmark" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_times_detectors_beside_torchvision_ssdlite():
    names = resolve_models(["hv_mobilevit_xxs"], peers=True, head="ssdlite")
    assert names == ["hv_mobilevit_xxs", "ssdlite320_mobilenet_v3_large"]
    rows = run_bench(names, BenchConfig(resolutions=(320,), warmup=0, rounds=1, memory=False, head="ssdlite"),
                     log=lambda msg: None)
    ours, peer = rows
    assert (ours.model, ours.source) == ("ssdlite-hv_mobilevit_xxs", "hybridvit")
    assert (peer.model, peer.source) == ("ssdlite320_mobilenet_v3_large", "torchvision")
    assert ours.params_m == pytest.approx(1.755, abs=1e-3)  # SSDLite-MobileViT-XXS, 80 classes
    assert peer.params_m == pytest.approx(3.440, abs=1e-3)  # torchvision's, 91 classes
    assert ours.latency_ms > 0 and peer.latency_ms > 0 and ours.gmacs > 0.5


def test_segmenters_bench_as_head_colon_backbone():
    rows = run_bench(["deeplabv3:hv_mobilevit_xxs"], BenchConfig(resolutions=(64,), warmup=0, rounds=1, memory=False),
                     log=lambda msg: None)
    assert rows[0].model == "deeplabv3:hv_mobilevit_xxs" and rows[0].source == "hybridvit"
    assert rows[0].params_m == pytest.approx(1.854853, abs=1e-6)  # 21 VOC classes, the paper's 1.9M
    assert rows[0].latency_ms > 0 and rows[0].gmacs > 0
    with pytest.raises(UnknownModelError, match="unknown segmentation head 'pspnet'"):
        resolve_models(["pspnet:hv_mobilevit_xxs"])
    from hybridvit.bench.commands import segmenter_names  # `bench --task segmentation [--head H]`

    assert segmenter_names(["hv_mobilevit_xxs", "allmlp:xformer_s"], "deeplabv3") == [
        "deeplabv3:hv_mobilevit_xxs", "allmlp:xformer_s"]
    with pytest.raises(HybridViTError, match="name them HEAD:BACKBONE or pass --head"):
        segmenter_names(["hv_mobilevit_xxs"], None)
