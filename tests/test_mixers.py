"""Token mixers as one swappable axis (layers/mixers.py): every allowed (family, mixer) pair forwards at two
sizes, trains (a few steps lower the loss) and exports to ONNX; slots that cannot take a mixer say so.

Kept cheap: the smallest model of each family at 32-96 px, 3 steps, ONNX of every swapped pair at one size.
"""
from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn as nn

import hybridvit
from hybridvit.errors import HybridViTError
from hybridvit.export.detection import OPSET
from hybridvit.export.onnx import export_onnx, onnx_max_error
from hybridvit.layers import MIXERS, MobileViTBlock, create_mixer, mixer_names
from hybridvit.models.boat import BoatConfig, BoatTransformer

# BOAT-Swin reduced as in tests/test_boat.py (groups of 4 tokens, 2x2 windows): FSLA slots in 3 blocks.
BOAT_SMALL = BoatConfig("swin", 8, (2, 2, 2, 1), (1, 2, 4, 8), 0.1, window_size=2, group_size=4, overlap=2)


def _boat_small(num_classes: int = 4, attn_layer: str = "fsla") -> nn.Module:
    return BoatTransformer(BOAT_SMALL, num_classes=num_classes, img_size=32, attn_layer=attn_layer)


# family -> (smallest model, two input sizes, the paper's mixer)
FAMILIES = {
    "mobilevit": ("hv_mobilevit_xxs", (64, 96), "mhsa"),
    "xformer": ("xformer_xxs", (64, 96), "xfa"),
    "mocovit": ("mocovit_050", (64, 96), "mosa"),
    "ceit": ("ceit_tiny_patch16_224", (32, 48), "mhsa"),
    "boat": (_boat_small, (32, 64), "fsla"),
}


def _create(name, **kwargs) -> nn.Module:
    return name(**kwargs) if callable(name) else hybridvit.create_model(name, **kwargs)
GRID_FREE = {"ceit"}  # a class token leads the sequence: only mixers without a token grid fit
PAIRS = [(f, m) for f in FAMILIES for m in mixer_names(grid=f not in GRID_FREE)]


def test_the_table_holds_every_mixer_of_the_families():
    assert list(MIXERS) == ["mhsa", "xfa", "mosa", "fsla"]
    assert mixer_names(grid=False) == ["mhsa", "xfa"]


@pytest.mark.parametrize("family,mixer", PAIRS)
def test_pair_forwards_at_two_sizes_and_trains(family, mixer):
    name, sizes, paper = FAMILIES[family]
    torch.manual_seed(0)
    model = _create(name, num_classes=4, attn_layer=mixer)
    kinds = {type(m) for m in model.modules()}
    assert type(create_mixer(mixer, 32, 2, slot="test")) in kinds
    assert mixer == paper or type(create_mixer(paper, 32, 2, slot="test")) not in kinds
    model.eval()
    with torch.no_grad():
        for size in sizes:
            assert model(torch.randn(2, 3, size, size)).shape == (2, 4)
    model.train()
    x, y = torch.randn(4, 3, sizes[0], sizes[0]), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(4):  # three updates
        torch.manual_seed(1)  # the same dropout masks each step: only the weights change the loss
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        if step < 3:
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert losses[-1] < losses[0] - 1e-3, losses


class _GridSpy(nn.Module):
    """A mixer that records the (N, hw) it is called with and passes the tokens through."""

    calls: list = []

    def forward(self, x: torch.Tensor, hw=None) -> torch.Tensor:
        self.calls.append((x.shape[1], None if hw is None else tuple(int(v) for v in hw)))
        return x


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in GRID_FREE])
def test_each_slot_passes_the_token_grid_rows_by_columns(family, monkeypatch):
    """On a 64 x 96 image every grid slot gets hw = (rows, cols) of its tokens: h * w = N and h < w."""
    from hybridvit.layers import mixers

    monkeypatch.setitem(mixers.MIXERS, "spy", mixers.MixerEntry(lambda *args, **kwargs: _GridSpy(), True, "test"))
    _GridSpy.calls = []
    name, _, _ = FAMILIES[family]
    with torch.no_grad():
        _create(name, num_classes=4, attn_layer="spy").eval()(torch.randn(1, 3, 64, 96))
    assert _GridSpy.calls and all(h * w == n and h < w for n, (h, w) in _GridSpy.calls), _GridSpy.calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_xfa_temperatures_are_kept_out_of_weight_decay_in_every_family(family):
    """XFA's lambda is [heads, 1], so the optimiser's 1-D rule misses it: every family names it in
    `no_weight_decay()` wherever XFA sits (XFormer's own, or swapped into another family's slot)."""
    model = _create(FAMILIES[family][0], num_classes=4, attn_layer="xfa")
    temperatures = {name for name, _ in model.named_parameters() if name.endswith(".temperature")}
    assert temperatures and temperatures <= model.no_weight_decay()


def test_paper_models_keep_their_mixer_by_default():
    """The default of each slot is the paper's mixer (so counts, outputs and keys are the paper model's)."""
    for family, (name, _, paper) in FAMILIES.items():
        default = _create(name).state_dict().keys()
        explicit = _create(name, attn_layer=paper).state_dict().keys()
        assert list(default) == list(explicit), family


@pytest.mark.parametrize("mixer", ["mosa", "fsla"])
def test_ceit_refuses_grid_mixers_in_one_line_naming_those_that_fit(mixer):
    with pytest.raises(HybridViTError, match=rf"attn_layer '{mixer}' cannot work in CeiT's encoder blocks: .*"
                                             r"class token breaks; choose one of mhsa, xfa$"):
        hybridvit.create_model("ceit_tiny_patch16_224", attn_layer=mixer)


def test_unknown_mixer_is_one_line_naming_the_table():
    with pytest.raises(HybridViTError, match=r"^unknown attn_layer 'swin' for MoCoViT's MTB; choose one of "
                                             r"mhsa, xfa, mosa, fsla$"):
        hybridvit.create_model("mocovit_050", attn_layer="swin")


class _Chain(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # torch.export wants the argument called x
        return super().forward(x)


@pytest.mark.parametrize("family,mixer", [(f, m) for f, m in PAIRS if m != FAMILIES[f][2]])
def test_swapped_pair_exports_to_onnx_and_matches_eager(family, mixer):
    """ONNX parity of every swapped pair (the paper pairs export in tests/test_export.py), on the smallest
    model at its first test size, checked in onnxruntime at another batch size. TorchScript-based exporter
    (as hybridvit/export/detection.py): ~1/3 of the dynamo exporter's cost here, the same ONNX operators."""
    import onnxruntime as ort

    name, sizes, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = _create(name, num_classes=4, attn_layer=mixer).eval()
    size = sizes[0]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    x = torch.randn(3, 3, size, size)
    (got,) = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_onnx_matches_eager_for_fsla_in_a_mobilevit_block(tmp_path):
    """Through the library's own (dynamo) export path: FSLA (its clustering graph follows the token count) on
    a MobileViT block's patch grid, checked at batch sizes it was not exported with, FSLA's cluster cuts
    replayed (hybridvit.export.onnx.onnx_max_error)."""
    from hybridvit.layers import TransformerLayer

    torch.manual_seed(0)
    graph = _Chain(MobileViTBlock(16, 32, [TransformerLayer(32, 2, attn_layer="fsla")])).eval()
    assert "TokenFSLA" in {type(m).__name__ for m in graph.modules()}
    export_onnx(graph, torch.randn(2, 16, 16, 16), tmp_path / "mixers.onnx", dynamic_hw=False)
    worst, _ = onnx_max_error(graph, tmp_path / "mixers.onnx", [torch.randn(b, 16, 16, 16) for b in (3, 1)])
    assert worst < 1e-4


def test_bench_times_mixers_against_tokens_and_models_with_each_mixer(tmp_path, capsys):
    """`bench --attn ... --tokens ...`: one row per (mixer, N) from the shared runner and counters, the
    mixer plot; named models come back once per mixer swapped in (MODEL@MIXER)."""
    import json

    from hybridvit.cli import main

    argv = ["bench", "xformer_xxs", "--attn", "mhsa", "xfa", "mosa", "fsla", "--tokens", "64", "256",
            "--res", "64", "--rounds", "1", "--warmup", "0", "--dim", "32", "--heads", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    mixers = {(r["model"], r["tokens"]): r for r in rows if r["tokens"]}
    assert set(mixers) == {(m, n) for m in MIXERS for n in (64, 256)}
    assert all(r["latency_ms"] > 0 and r["peak_mem_mb"] > 0 for r in mixers.values())
    growth = {m: mixers[m, 256]["gmacs"] / mixers[m, 64]["gmacs"] for m in MIXERS}
    assert growth["xfa"] == pytest.approx(4, rel=0.01)  # linear in N
    assert growth["mhsa"] > 5 and growth["mosa"] > 5  # the N x N map (the no-attention part stays linear)
    assert mixers["fsla", 256]["gmacs"] / mixers["mhsa", 256]["gmacs"] < 0.8  # local groups, not N x N
    models = {r["model"] for r in rows if r["res"] == 64}
    assert models == {f"xformer_xxs@{m}" for m in MIXERS}
    assert (tmp_path / "mixers.png").stat().st_size > 0 and (tmp_path / "latency.png").is_file()
    assert "xformer_xxs@fsla" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--tokens", "64"], "--tokens times token mixers: name them with --attn"),
    (["--attn", "lca"], "unknown attn_layer 'lca' for the mixer bench; choose one of mhsa, xfa, mosa, fsla"),
    (["ceit_tiny_patch16_224", "--attn", "fsla"], "attn_layer 'fsla' cannot work in CeiT's encoder blocks"),
])
def test_bench_mixer_errors_are_one_line(argv, message, tmp_path, capsys):
    from hybridvit.cli import main

    assert main(["bench", *argv, "--rounds", "1", "--warmup", "0", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_train_attn_records_the_mixer_for_eval_and_resume(tmp_path, capsys):
    """`train --attn xfa` builds the model with that mixer; eval and export rebuild it from run.json; a
    resume with another mixer is refused like any changed flag."""
    import json

    from hybridvit.cli import main

    out = tmp_path / "run"
    quick = ["--limit", "32", "--batch-size", "16", "--no-progress", "--epochs", "1", "--img-size", "32"]
    assert main(["train", "--model", "hv_mobilevit_xxs", "--attn", "xfa", "--output", str(out), *quick,
                 "--max-steps", "1"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["attn_layer"] == "xfa" and info["flags"]["attn"] == "xfa"
    assert main(["eval", "--checkpoint", str(out), "--weights", "last"]) == 0
    assert main(["export", str(out), "--format", "torchscript", "--weights", "last"]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "hv_mobilevit_xxs", "--attn", "mosa", "--output", str(out), *quick,
                 "--max-steps", "2", "--resume"]) == 2
    assert "--attn 'mosa' (saved 'xfa')" in capsys.readouterr().err
