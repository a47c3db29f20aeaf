"""Datasets: embedded digits split, ImageFolder with corrupt files, data-directory errors (exit code 2)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hybridvit.cli import main
from hybridvit.data.datasets import DigitsDataset, ImageFolder, build_datasets
from hybridvit.errors import DataError


def _tree(root, classes=("cat", "dog"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def test_digits_fixed_split():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert (len(train), len(val)) == (1437, 360)  # 1,797 digits, 20% held out
    image, label = train[0]
    assert image.size == (32, 32) and image.mode == "RGB" and 0 <= label < 10
    assert np.array_equal(np.asarray(DigitsDataset("val")[7][0]), np.asarray(val[7][0]))
    assert sorted(set(val.targets)) == list(range(10))


def test_corrupt_jpeg_is_skipped_and_counted(tmp_path):
    root = _tree(tmp_path)
    good = (root / "train/cat/0.jpg").read_bytes()
    (root / "train/cat/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train/dog/garbage.jpg").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        splits = build_datasets(root)
    assert len(splits.train) == 6 and len(splits.val) == 6
    assert sorted(p.rsplit("/", 1)[1] for p in splits.skipped) == ["garbage.jpg", "truncated.jpg"]
    assert splits.classes == ["cat", "dog"]
    image, label = splits.train[3]
    assert image.mode == "RGB" and label == 1


def test_all_corrupt_is_a_clear_error(tmp_path):
    folder = tmp_path / "cls"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"no readable images in .* \(3 files skipped as corrupt\)"):
        ImageFolder(tmp_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "data directory not found: "),
        (lambda p: p, "has no train or val/ subfolder"),
        (lambda p: (p / "train").mkdir() or (p / "val").mkdir() or p, "has no class subfolders"),
    ],
)
def test_bad_data_directory_exit_code_2(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code = main(["train", "--model", "hv_mobilevit_xxs", "--data", str(path), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hybridvit: error: ") and message in err and err.count("\n") == 1


def test_training_reports_skipped_files(tmp_path, capsys):
    root = _tree(tmp_path / "data")
    (root / "val/dog/cut.jpg").write_bytes((root / "val/dog/0.jpg").read_bytes()[:300])
    argv = ["train", "--model", "hv_mobilevit_xxs", "--data", str(root), "--img-size", "32", "--output",
            str(tmp_path / "out"), "--no-progress", "--epochs", "1"]
    with pytest.warns(UserWarning, match="cut.jpg"):
        assert main([*argv, "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "done: 1 epochs, 2 steps" in out and "skipped 1 unreadable image(s), e.g. " in out and "cut.jpg" in out
    with pytest.warns(UserWarning):
        assert main([*argv, "--batch-size", "64", "--overwrite"]) == 2
    assert "6 training images split over 1 process(es) do not fill one batch of 64" in capsys.readouterr().err
