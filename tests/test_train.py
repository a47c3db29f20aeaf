"""Training engine: exact resume, README main job (short), torchrun DDP, recipes, errors, NaN stop."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridvit.cli import main
from hybridvit.data.datasets import DigitsDataset
from hybridvit.engine.checkpointing import latest_dir
from hybridvit.engine.recipes import RECIPES, get_recipe
from hybridvit.engine.train import TrainConfig, Trainer, build_optimizer
from hybridvit.errors import RecipeError, TrainingDivergedError

ROOT = Path(__file__).resolve().parents[1]
MODEL = "hv_mobilevit_xxs"
# The README main-job command (docs/training.md), and the quick flags the short test adds.
MAIN_JOB = ["train", "--model", MODEL, "--output"]
QUICK = ["--limit", "48", "--batch-size", "16", "--no-progress"]


def _train(out, *extra):
    return main([*MAIN_JOB, str(out), *QUICK, *extra])


def _committed(out, name="last.safetensors"):
    """A file of the committed checkpoint set of run directory `out`."""
    return latest_dir(Path(out)) / name


def test_main_job_short(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2") == 0
    printed = capsys.readouterr().out
    assert "done: 2 epochs, 6 steps" in printed and "val top-1" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [int(r["step"]) for r in rows] == [3, 6]
    assert all(0 <= float(r["val_top1"]) <= 100 and float(r["train_loss"]) > 0 for r in rows)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == MODEL and info["classes"] == [str(d) for d in range(10)] and info["img_size"] == 32
    assert set(load_file(out / "best.safetensors")) == set(load_file(_committed(out)))

    image, label = DigitsDataset("val")[0]
    image.save(tmp_path / "digit.png")
    assert main(["predict", "--checkpoint", str(out), str(tmp_path / "digit.png"), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("digit.png") and len(lines) == 4
    probs = [float(line.split()[0].rstrip("%")) for line in lines[1:]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.01

    assert main(["eval", "--checkpoint", str(out), "--weights", "last"]) == 0
    assert "360 images at 32px: top-1" in capsys.readouterr().out


def test_resume_is_exact(tmp_path):
    # Multi-scale sampler, EMA and label smoothing of the MobileViT recipe, shrunk to 32 px.
    flags = ["--recipe", "mobilevit", "--img-size", "32", "--scales", "24,40"]
    assert _train(tmp_path / "once", *flags, "--max-steps", "4") == 0
    assert _train(tmp_path / "twice", *flags, "--max-steps", "2") == 0
    state = torch.load(_committed(tmp_path / "twice", "state.pt"), weights_only=True)
    assert (state["global_step"], state["step_in_epoch"]) == (2, 2)
    halfway = load_file(_committed(tmp_path / "twice"))
    assert _train(tmp_path / "twice", *flags, "--max-steps", "4", "--resume") == 0
    for name in ("last.safetensors", "last_ema.safetensors"):
        once, twice = load_file(_committed(tmp_path / "once", name)), load_file(_committed(tmp_path / "twice", name))
        assert once.keys() == twice.keys()
        for key in once:
            assert torch.equal(once[key], twice[key]), key
    final = load_file(_committed(tmp_path / "once"))
    assert any(not torch.equal(final[k], v) for k, v in halfway.items())  # steps 3-4 did change the weights


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
           "-m", "hybridvit", *MAIN_JOB, str(out), *QUICK, "--epochs", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done: 1 epochs") == 1  # only rank 0 reports
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2
    state = torch.load(_committed(out, "state.pt"), weights_only=True)
    assert len(state["rng"]) == 2 and state["global_step"] == 1  # 24 images per rank, batch 16
    row = next(csv.DictReader((out / "metrics.csv").open()))
    assert float(row["val_top1"]) >= 0 and int(row["step"]) == 1


def test_weight_decay_exclusions():
    from hybridvit import create_model

    model = create_model(MODEL, num_classes=10)
    decayed = build_optimizer(model, get_recipe("deit"), 1e-3).param_groups
    no_decay = {id(p) for g in decayed if g["weight_decay"] == 0 for p in g["params"]}
    assert no_decay == {id(p) for p in model.parameters() if p.ndim <= 1}
    everything = build_optimizer(model, get_recipe("mobilevit"), 1e-3).param_groups  # MobileViT decays all
    assert all(g["weight_decay"] == 0.01 for g in everything)


@pytest.mark.parametrize("recipe", ["deit", "swin", "ghostnet"])  # mixup+RandAugment+EMA, grad clip, SGD
def test_recipes_take_steps(tmp_path, recipe):
    cfg = TrainConfig(MODEL, recipe=recipe, output=str(tmp_path), img_size=32, batch_size=8, limit=16,
                      max_steps=1, progress=False)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.run()
    assert summary["steps"] == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_recipe_sources_documented():
    docs = (ROOT / "docs/training.md").read_text()
    for name, recipe in RECIPES.items():
        assert recipe.source and f"`{name}`" in docs


def test_warmup_then_cosine(tmp_path):
    trainer = Trainer(TrainConfig(MODEL, output=str(tmp_path), limit=64, batch_size=16, epochs=10, progress=False))
    lrs = []
    for step in range(trainer.total_steps + 1):
        trainer.scheduler.step_update(step)
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    warmup = trainer.steps_per_epoch  # the digits recipe warms up for one epoch
    # timm's warmup_prefix=False: the cosine is not offset by the warm-up, as in ml-cvnets (spec §4.7)
    cosine = 1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + math.cos(math.pi * warmup / trainer.total_steps))
    assert lrs[0] == pytest.approx(1e-4) and lrs[warmup] == pytest.approx(cosine)
    assert all(a <= b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1]))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :])) and lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_nan_loss_stops_and_keeps_checkpoint(tmp_path):
    assert _train(tmp_path, "--max-steps", "1") == 0
    kept = _committed(tmp_path).read_bytes()
    trainer = Trainer(TrainConfig(MODEL, output=str(tmp_path), resume=True, limit=48, batch_size=16, progress=False))
    trainer.criterion = lambda logits, target: logits.sum() * float("nan")
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 2 .*last good checkpoint in .* is kept"):
        trainer.run()
    assert _committed(tmp_path).read_bytes() == kept
    assert torch.load(_committed(tmp_path, "state.pt"), weights_only=True)["global_step"] == 1


def test_errors_one_line_exit_2(tmp_path, capsys):
    def run(*argv):
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return err

    assert "unknown recipe 'nope'; choose one of: digits, mobilevit" in run("train", "--model", MODEL, "--recipe", "nope")
    with pytest.raises(RecipeError):
        get_recipe("nope")
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "1") == 0
    capsys.readouterr()
    other = "hv_mobilevit_xs"
    assert f"was trained for model {MODEL}, not {other}" in run("eval", "--checkpoint", str(out), "--model", other)
    assert f"holds a {MODEL} run, not {other}" in run("train", "--model", other, "--output", str(out), "--resume")
    lone = tmp_path / "lone.safetensors"  # a weights file without run.json beside it
    lone.write_bytes(_committed(out).read_bytes())
    assert "does not fit model" in run("predict", "--checkpoint", str(lone), "--model", other, "x.png")
    assert "not a hybridvit training output directory" in run(
        "train", "--model", MODEL, "--output", str(tmp_path / "none"), "--resume"
    )


def test_predict_bad_image(tmp_path, capsys):
    assert _train(tmp_path, "--max-steps", "1") == 0
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path), "--weights", "last", str(tmp_path / "bad.jpg")]) == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_reaches_90_percent(tmp_path, capsys):
    """The README main-job command as written (docs/training.md); minutes on 2 CPU cores."""
    assert main([*MAIN_JOB, str(tmp_path), "--no-progress"]) == 0
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert float(rows[-1]["val_top1"]) >= 90.0
