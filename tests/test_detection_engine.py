"""Detection through the one training loop: CLI train/eval/predict/export on the digit scenes, exact resume, bad data."""
from __future__ import annotations

import csv
import json

import torch
from safetensors.torch import load_file

from hybridvit.cli import main
from hybridvit.data.digit_scenes import digit_scenes

# Tiny runs on the default digit scenes (cached after the first build): 8 images, batch 4, 160 px.
TRAIN = ["train", "--task", "detection", "--head", "ssdlite", "--model", "hv_mobilevit_xxs", "--img-size", "160",
         "--limit", "8", "--batch-size", "4", "--no-progress", "--output"]


def _committed(out):
    return out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip() / "last.safetensors"


def test_train_eval_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, str(out), "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "done: 1 epochs, 2 steps" in printed and "val AP" in printed
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "step", "lr", "train_loss", "val_AP", "val_AP50", "val_AP75", "val_APs", "val_APm",
                             "val_APl", "epoch_seconds"]
    assert float(rows[0]["train_loss"]) > 0 and 0 <= float(rows[0]["val_AP"]) <= 1
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((out / "run.json").read_text())
    assert (info["task"], info["head"], info["num_classes"], info["category_ids"]) == ("detection", "ssdlite", 10, list(range(1, 11)))

    assert main(["eval", "--checkpoint", str(out), "--weights", "last"]) == 0
    assert "100 images: AP " in capsys.readouterr().out
    scene = digit_scenes() / "images" / "val" / "000000.png"
    assert main(["predict", "--checkpoint", str(out), "--out", str(tmp_path / "pred"), "--score-threshold", "0", str(scene)]) == 0
    assert (tmp_path / "pred" / "000000.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and {r["image_id"] for r in results} == {1} and all(1 <= r["category_id"] <= 10 for r in results)

    onnx = tmp_path / "detector.onnx"
    assert main(["export", "hv_mobilevit_xxs", "--task", "detection", "--checkpoint", str(out), "--res", "160",
                 "--out", str(onnx)]) == 0
    printed = capsys.readouterr().out
    assert onnx.is_file() and float(printed.split("max error ")[1].split()[0]) < 1e-4  # at 160x176 and 192x208


def test_resume_is_exact(tmp_path):
    assert main([*TRAIN, str(tmp_path / "once"), "--max-steps", "2"]) == 0
    assert main([*TRAIN, str(tmp_path / "twice"), "--max-steps", "1"]) == 0
    assert main([*TRAIN, str(tmp_path / "twice"), "--max-steps", "2", "--resume"]) == 0
    once, twice = load_file(_committed(tmp_path / "once")), load_file(_committed(tmp_path / "twice"))
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)


def test_bad_data_is_one_line_exit_2(tmp_path, capsys):
    def run(*argv):
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        return err

    bad = tmp_path / "coco"
    (bad / "annotations").mkdir(parents=True)
    (bad / "images").mkdir()
    assert "has no annotations/instances_train*.json" in run(*TRAIN, str(tmp_path / "o"), "--data", str(bad))
    coco = {"images": [{"id": 1, "file_name": "x.png", "width": 8, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}], "categories": [{"id": 1}]}
    for split in ("train", "val"):
        (bad / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    assert "no usable images in" in run(*TRAIN, str(tmp_path / "o"), "--data", str(bad))


def test_backbone_checkpoint_initialises_the_detector(tmp_path, capsys):
    from safetensors.torch import save_file

    from hybridvit import create_model
    from hybridvit.engine.train import TrainConfig, Trainer

    classifier = create_model("hv_mobilevit_xxs", num_classes=10).state_dict()
    stem = next(v for k, v in classifier.items() if k.startswith("stem") and k.endswith("weight") and v.ndim == 4)
    save_file(classifier, tmp_path / "cls.safetensors")
    cfg = TrainConfig("hv_mobilevit_xxs", task="detection", img_size=160, limit=8, batch_size=4, output=str(tmp_path / "o"),
                      backbone_checkpoint=str(tmp_path / "cls.safetensors"), progress=False)
    weights = Trainer(cfg).model.state_dict().values()
    assert any(v.shape == stem.shape and torch.equal(v, stem) for v in weights)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert main([*TRAIN, str(tmp_path / "o"), "--backbone-checkpoint", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "cannot read checkpoint" in err and err.count("\n") == 1


def test_torchrun_evaluation_merges_the_shards(tmp_path):
    """Two gloo processes each score their shard; rank 0 merges them: both ranks report the one-process metrics."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from detection_ddp_eval import evaluate_shards, write_id_coco

    data = write_id_coco(tmp_path / "coco")
    script = Path(__file__).with_name("detection_ddp_eval.py")
    root = Path(__file__).parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29733",
           str(script), str(data), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = evaluate_shards(data)
    assert single["count"] == 12 and 0.3 < single["AP50"] < 0.9  # the oracle's misses make AP informative
    for rank in (0, 1):
        merged = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert merged["shard"] == 6  # each rank saw half of the images ...
        assert {k: merged[k] for k in single if k not in ("rank", "shard")} == {
            k: v for k, v in single.items() if k not in ("rank", "shard")}  # ... and reports the metrics of all
