"""Reliability: a kill or a full disk at any moment of a checkpoint write leaves one complete
checkpoint, from which `--resume` continues bit-exactly; user mistakes are one-line errors."""
from __future__ import annotations

import csv
import json
import errno
import os
import re
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hybridvit import checkpoint as checkpoint_io
from hybridvit.cli import main
from hybridvit.engine import checkpointing as ckpt
from hybridvit.engine.train import TrainConfig, Trainer
from hybridvit.errors import HybridViTError

MODEL = "hv_mobilevit_xxs"
# Two epochs of 2 steps; EMA on, so a checkpoint set holds three files.
RUN = dict(model=MODEL, limit=16, batch_size=8, epochs=2, ema_decay=0.9, progress=False)


def _run(out: Path, **kwargs) -> dict:
    return Trainer(TrainConfig(output=str(out), **{**RUN, **kwargs})).run()


def _weights(out: Path) -> dict[str, torch.Tensor]:
    folder = ckpt.latest_dir(out)
    return {f"{name}/{k}": v for name in (ckpt.WEIGHTS, ckpt.EMA_WEIGHTS) for k, v in load_file(folder / name).items()}


def _assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run stopped after epoch 1 (the template), and the same run finished, with the writes it made."""
    root = tmp_path_factory.mktemp("runs")
    _run(root / "epoch1", max_steps=2)
    shutil.copytree(root / "epoch1", root / "full")
    writes: list[str] = []
    real = ckpt.write_synced, ckpt.atomic_write
    ckpt.write_synced = lambda path, *a, **k: (writes.append(Path(path).name), real[0](path, *a, **k))[1]
    ckpt.atomic_write = lambda path, *a, **k: (writes.append(Path(path).name), real[1](path, *a, **k))[1]
    try:
        _run(root / "full", resume=True)
    finally:
        ckpt.write_synced, ckpt.atomic_write = real
    return root, _weights(root / "full"), writes


def _killed_at(out: Path, index: int, mode: str) -> None:
    """Resume `out` in a forked child that SIGKILLs itself at the `index`-th file write (before it,
    after it, or with the file half written), as a power cut or `kill -9` would."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls = iter(range(10**6))
            real = {"write_synced": ckpt.write_synced, "atomic_write": ckpt.atomic_write}

            def wrap(name):
                def write(path, writer, *args, **kwargs):
                    if next(calls) != index:
                        return real[name](path, writer, *args, **kwargs)
                    if mode == "before":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if mode == "torn":  # half of the file, where the write would leave it
                        target = Path(path) if name == "write_synced" else Path(path).parent / f".{Path(path).name}.x.tmp"
                        real["write_synced"](target, writer)
                        with open(target, "r+b") as f:
                            f.truncate(target.stat().st_size // 2)
                        os.kill(os.getpid(), signal.SIGKILL)
                    real[name](path, writer, *args, **kwargs)
                    os.kill(os.getpid(), signal.SIGKILL)
                return write

            ckpt.write_synced, ckpt.atomic_write = wrap("write_synced"), wrap("atomic_write")
            _run(out, resume=True)
        finally:
            os._exit(3)  # not killed: the index was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _check_resumes_exactly(out: Path, expected: dict[str, torch.Tensor]) -> None:
    folder = ckpt.latest_dir(out)  # at every instant one complete set: the pointer names it, its files read
    state, _ = ckpt.load_state(out)
    assert {p.name for p in folder.iterdir()} == {ckpt.WEIGHTS, ckpt.EMA_WEIGHTS, ckpt.STATE}
    assert state["global_step"] in (2, 4)
    summary = _run(out, resume=True)
    assert summary["steps"] == 4
    _assert_equal(_weights(out), expected)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # no duplicated or torn row
    leftovers = [p.name for p in (out / ckpt.CHECKPOINTS).iterdir()] + [p.name for p in out.glob(".*")]
    assert sorted(leftovers) == [ckpt.POINTER, "step-000000004"]


def test_kill_at_every_write_then_resume_is_exact(runs, tmp_path):
    root, expected, writes = runs
    assert writes[-4:] == [ckpt.WEIGHTS, ckpt.EMA_WEIGHTS, ckpt.STATE, ckpt.POINTER]  # after `best`, if it improved
    # Killed before each file, with each file half written, and after the last (before the clean-up);
    # "after file k" is "before file k+1".
    last = len(writes) - 1
    cases = [(i, "before") for i in range(len(writes))] + [(last - 2, "torn"), (last, "torn"), (last, "after")]
    for index, mode in cases:
        out = tmp_path / f"{mode}-{index}-{writes[index]}"
        shutil.copytree(root / "epoch1", out)
        _killed_at(out, index, mode)
        _check_resumes_exactly(out, expected)


def test_full_disk_is_one_line_and_resume_is_exact(runs, tmp_path, monkeypatch, capsys):
    root, expected, _ = runs
    for failing in (ckpt.STATE, ckpt.POINTER):
        out = tmp_path / failing
        shutil.copytree(root / "epoch1", out)
        real_fsync = os.fsync

        def fsync(fd):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.lstrip(".").startswith(failing):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_fsync(fd)

        monkeypatch.setattr(checkpoint_io.os, "fsync", fsync)
        argv = ["train", "--model", MODEL, "--output", str(out), "--resume", "--limit", "16", "--batch-size", "8",
                "--epochs", "2", "--ema-decay", "0.9", "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{failing}" in err and "No space left on device" in err, err
        monkeypatch.setattr(checkpoint_io.os, "fsync", real_fsync)
        assert ckpt.load_state(out)[0]["global_step"] == 2  # the previous checkpoint is intact
        _check_resumes_exactly(out, expected)


def test_checkpoint_files_get_the_usual_permissions(runs):
    root, _, _ = runs
    mask = os.umask(0)
    os.umask(mask)
    for path in [*ckpt.latest_dir(root / "full").iterdir(), root / "full" / ckpt.RUN_INFO]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def _one_line_error(capsys, *argv: str) -> str:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and re.match(r"hybridvit( \w+)?: error: ", err) and err.count("\n") == 1, err
    assert "\x1b[" not in err
    return err


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "state.pt").write_bytes(os.urandom(4000)), "cannot read checkpoint .*state.pt: it is corrupt"),
    (lambda d: torch.save({"x": _Evil()}, d / "state.pt"), "cannot read checkpoint .*state.pt: it is corrupt or not"),
    (lambda d: torch.save({"global_step": 2}, d / "state.pt"), "not a hybridvit training state: it lacks epoch, "),
    (lambda d: (d / ckpt.WEIGHTS).write_bytes((d / ckpt.WEIGHTS).read_bytes()[:5000]), "last.safetensors: it is corrupt"),
    (lambda d: (d / ckpt.EMA_WEIGHTS).unlink(), "has no last_ema.safetensors"),
    (lambda d: (d.parent / ckpt.POINTER).write_text("../../etc"), "which is not a checkpoint directory"),
    (lambda d: (d.parent / ckpt.POINTER).unlink(), "holds no complete checkpoint yet"),
    (lambda d: (d.parents[1] / ckpt.RUN_INFO).write_text("{not json"), "run.json: it is corrupt"),
    (lambda d: (d.parents[1] / ckpt.RUN_INFO).write_text("{}"), "not a hybridvit run description: it names no model"),
])
def test_damaged_checkpoint_is_a_one_line_error(runs, tmp_path, capsys, monkeypatch, damage, message):
    out = tmp_path / "run"
    shutil.copytree(runs[0] / "epoch1", out)
    damage(ckpt.latest_dir(out))
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(capsys, "train", "--model", MODEL, "--output", str(out), "--resume", "--no-progress")
    assert re.search(message, err), err
    assert not (tmp_path / "pwned").exists()


def test_resume_takes_saved_flags_and_refuses_conflicting_ones(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs[0] / "epoch1", out)
    err = _one_line_error(capsys, "train", "--model", MODEL, "--output", str(out), "--resume", "--lr", "0.1",
                          "--batch-size", "4", "--epochs", "2", "--seed", "3", "--ema-decay", "0.5", "--img-size", "40")
    for part in ("--lr 0.1 (saved unset)", "--batch-size 4 (saved 8)", "--seed 3 (saved 0)",
                 "--ema-decay 0.5 (saved 0.9)", "--img-size 40 (saved unset)"):
        assert part in err, err
    assert "--epochs" not in err  # the same value is no conflict
    err = _one_line_error(capsys, "train", "--model", MODEL, "--output", str(out), "--resume", "--limit", "8")
    assert "--limit 8 (saved 16)" in err
    # Flags left out take the saved values: the plain resume finishes the run exactly.
    assert main(["train", "--model", MODEL, "--output", str(out), "--resume", "--no-progress"]) == 0
    _assert_equal(_weights(out), runs[1])


def test_training_into_an_existing_run_needs_resume_or_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(runs[0] / "epoch1", out)
    (out / "notes.txt").write_text("mine")
    argv = ["train", "--model", "hv_mobilevit_xs", "--output", str(out), "--limit", "16", "--batch-size", "8",
            "--max-steps", "1", "--no-progress"]
    err = _one_line_error(capsys, *argv)
    assert "already holds a training run: pass --resume to continue it or --overwrite to replace it" in err
    assert main([*argv, "--overwrite"]) == 0
    assert ckpt.read_run_info(out)["model"] == "hv_mobilevit_xs" and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (out / ckpt.CHECKPOINTS).iterdir()) == [ckpt.POINTER, "step-000000001"]


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def _poisoned(value: float) -> torch.nn.Module:
    model = _Tiny().eval()
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = value
    return model


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_not_exported(tmp_path, value):
    from hybridvit.export import ExportError, export_model, fuse_bn
    from hybridvit.export.onnx import export_onnx, onnx_max_error
    from hybridvit.export.torchscript import export_torchscript, torchscript_max_error

    model, x = _poisoned(value), torch.randn(2, 3, 8, 8)
    with pytest.raises(ExportError, match="gives NaN or inf outputs on a random input"):
        export_model("tiny", "torchscript", out=tmp_path / "t.pt", res=8, model=model)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HybridViTError, match="outputs are not finite"):
        fuse_bn(model, x)
    # The checks themselves: a NaN or inf output is an infinite error, never "max error 0.00e+00".
    traced = export_torchscript(model, x, tmp_path / "t.pt")
    assert torchscript_max_error(model, traced, [x]) == float("inf")
    export_onnx(model, x, tmp_path / "t.onnx", dynamic_hw=False)
    assert onnx_max_error(model, tmp_path / "t.onnx", [x]) == (float("inf"), float("inf"))


def test_failed_export_keeps_the_previous_file(tmp_path, monkeypatch):
    from hybridvit.export import ExportError, api, export_model

    out = tmp_path / "model.pt"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(api, "torchscript_max_error", lambda *args: 0.5)
    with pytest.raises(ExportError, match="differs from the eager model"):
        export_model("tiny", "torchscript", out=out, res=8, model=_Tiny().eval())
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.undo()
    result = export_model("tiny", "torchscript", out=out, res=8, model=_Tiny().eval())
    assert result.path == out and out.read_bytes() != b"previous export" and len(list(tmp_path.iterdir())) == 1


def test_export_output_problems_are_one_line(tmp_path, capsys, monkeypatch):
    argv = ["export", MODEL, "--format", "torchscript", "--res", "32", "--out"]
    err = _one_line_error(capsys, *argv, str(tmp_path))
    assert f"--out {tmp_path} is a directory" in err
    os.mkfifo(tmp_path / "fifo")
    assert "is not a regular file" in _one_line_error(capsys, *argv, str(tmp_path / "fifo"))
    (tmp_path / "fifo").unlink()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot create the folder of --out" in _one_line_error(capsys, *argv, str(blocker / "sub/m.pt"))

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file\n  more")

    monkeypatch.setattr(torch.jit, "save", full)
    err = _one_line_error(capsys, *argv, str(tmp_path / "m.pt"))
    assert "cannot write the export into" in err and "PytorchStreamWriter failed" in err
    assert list(tmp_path.iterdir()) == [blocker]


def test_export_a_run_directory(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[0] / "full", run)
    assert main(["export", str(run), "--format", "torchscript", "--weights", "last"]) == 0
    assert f"wrote {run / (MODEL + '.pt')} (torchscript, exported at 2x3x32x32" in capsys.readouterr().out
    traced = torch.jit.load(str(run / f"{MODEL}.pt"))
    assert traced(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # A weights file with a 10-class head, without run.json: the class count comes from the checkpoint.
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((ckpt.latest_dir(run) / ckpt.WEIGHTS).read_bytes())
    assert main(["export", MODEL, "--format", "torchscript", "--res", "32", "--checkpoint", str(lone),
                 "--out", str(tmp_path / "lone.pt")]) == 0


def test_model_name_mistakes(capsys):
    from hybridvit import UnknownModelError, create_model

    with pytest.raises(UnknownModelError, match="a model name must be a string, not NoneType"):
        create_model(None)
    err = _one_line_error(capsys, "export", "hv_mobilevit_xxz")
    suggested = err.split("did you mean ")[1].rstrip("?\n").split(", ")
    assert len(suggested) == len(set(suggested)) and "hv_mobilevit_xxs" in suggested


def _folder_tree(root: Path, classes=("cat", "dog"), per_class=2) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    from hybridvit.data.datasets import open_rgb

    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    got = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert got.shape == (8, 8, 3) and np.array_equal(got[..., 0], np.rint(ramp / 257).astype(np.uint8))
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tif")
    assert np.abs(np.asarray(open_rgb(tmp_path / "float.tif"), dtype=int)[..., 1] - got[..., 1]).max() <= 1
    Image.fromarray(np.full((4, 4), 7.5, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"F image with values 7.5..7.5, outside 0..1"):
        open_rgb(tmp_path / "hdr.tif")


def test_load_time_failures_are_counted_never_substituted_in_eval(tmp_path, monkeypatch):
    from hybridvit.data.datasets import MAX_CONSECUTIVE_FAILURES, ImageFolder, TransformedDataset, skip_unreadable
    from hybridvit.errors import DataError

    root = _folder_tree(tmp_path, per_class=5)
    (root / "val/cat/0.png").write_bytes(b"broken after a header-only scan")
    monkeypatch.setattr("hybridvit.data.datasets._readable", lambda path, full: True)  # as --check-images none
    val = ImageFolder(root / "val", classes=["cat", "dog"], check="none", substitute=False)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        items = [val[i] for i in range(len(val))]
    assert items[0] is None and all(item is not None for item in items[1:]) and len(val.skipped) == 1
    loader = torch.utils.data.DataLoader(TransformedDataset(val, np.asarray), batch_size=4, collate_fn=skip_unreadable)
    with pytest.warns(UserWarning):
        assert [len(batch[1]) for batch in loader] == [3, 4, 2]  # the broken one dropped, none duplicated
    for path in (root / "train").rglob("*.png"):
        path.write_bytes(b"all broken")
    train = ImageFolder(root / "train", check="none")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=f"{MAX_CONSECUTIVE_FAILURES} images in a row could not be read"):
        train[0]


def test_data_layout_problems_are_named(tmp_path, capsys):
    from hybridvit.data.datasets import build_datasets
    from hybridvit.errors import DataError

    root = _folder_tree(tmp_path / "a")
    (root / "train/empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) empty in .* hold no readable image"):
        build_datasets(root)
    root = _folder_tree(tmp_path / "b", classes=("cat",))
    with pytest.raises(DataError, match=r"has a single class \(cat\): a classifier needs at least 2"):
        build_datasets(root)
    root = _folder_tree(tmp_path / "c")
    (root / "val/bird").mkdir()
    shutil.copy(root / "val/cat/0.png", root / "val/bird/0.png")
    with pytest.raises(DataError, match="class folder\\(s\\) the model does not know: bird"):
        build_datasets(root)


def test_resume_with_other_classes_and_eval_on_other_classes(tmp_path, capsys):
    root = _folder_tree(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--model", MODEL, "--data", str(root), "--output", str(out), "--img-size", "32",
            "--batch-size", "2", "--max-steps", "1", "--no-progress"]
    assert main(argv) == 0
    for split in ("train", "val"):
        shutil.copytree(root / split / "cat", root / split / "cow")
    err = _one_line_error(capsys, "train", "--model", MODEL, "--output", str(out), "--resume")
    assert "the classes in the data changed since" in err and "(2 then, 3 now)" in err
    other = _folder_tree(tmp_path / "other", classes=("x", "y"))
    err = _one_line_error(capsys, "eval", "--checkpoint", str(out), "--weights", "last", "--data", str(other))
    assert "class folder(s) the model does not know: x, y" in err


def test_predict_mistakes_are_one_line(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs[0] / "epoch1", run)
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP: over twice PIL's limit of ~89 MP
    predict = ["predict", "--checkpoint", str(run), "--weights", "last"]
    assert "cannot read image" in _one_line_error(capsys, *predict, str(bomb))
    assert "argument --topk: must be at least 1, got -1" in _one_line_error(capsys, *predict, "--topk", "-1", str(image))
    info = json.loads((run / ckpt.RUN_INFO).read_text())
    (run / ckpt.RUN_INFO).write_text(json.dumps({**info, "classes": info["classes"][:3]}))
    assert "lists 3 classes but the model's head has 10" in _one_line_error(capsys, *predict, str(image))
    (run / ckpt.RUN_INFO).write_text(json.dumps({k: v for k, v in info.items() if k != "model"}))
    assert "names no model" in _one_line_error(capsys, *predict, str(image))
    (run / ckpt.RUN_INFO).write_text("{")
    assert "run.json: it is corrupt" in _one_line_error(capsys, *predict, str(image))
    assert "argument --batch-size: must be at least 1, got 0" in _one_line_error(
        capsys, "eval", "--checkpoint", str(run), "--batch-size", "0")


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", MODEL, "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["train", "--model", MODEL, "--epochs", "-1"], "argument --epochs: must be at least 1, got -1"),
    (["train", "--model", MODEL, "--img-size", "0"], "argument --img-size: must be at least 1, got 0"),
    (["train", "--model", MODEL, "--scales", "0,-8"], "argument --scales: expected comma-separated positive"),
    (["train", "--model", MODEL, "--workers", "-1"], "argument --workers: must be 0 or more, got -1"),
    (["train", "--model", MODEL, "--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    (["train", "--model", MODEL, "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["train", "--model", MODEL, "--limit", "-5"], "argument --limit: must be at least 1, got -5"),
    (["train", "--model", MODEL, "--device", "gpu"], "argument --device: unknown device 'gpu'"),
    (["info", MODEL, "--res", "-8"], "argument --res: must be at least 1, got -8"),
    (["bench", MODEL, "--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (["bench", MODEL, "--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["bench", MODEL, "--batch", "-1"], "argument --batch: must be at least 1, got -1"),
    (["bench", MODEL, "--res", "0"], "argument --res: must be at least 1, got 0"),
    (["export", MODEL, "--res", "0"], "argument --res: must be at least 1, got 0"),
])
def test_argument_ranges_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["bench", MODEL, "--device", "cuda"])
    assert "no CUDA GPU is available here" in capsys.readouterr().err


def test_output_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["train", "--model", MODEL, "--limit", "16", "--batch-size", "8", "--max-steps", "1", "--no-progress"]
    assert "cannot write the output directory" in _one_line_error(capsys, *argv, "--output", str(blocker))

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(checkpoint_io.tempfile, "mkstemp", read_only)  # root ignores chmod, so inject the error
    err = _one_line_error(capsys, *argv, "--output", str(tmp_path / "ro"))
    assert "cannot write" in err and "Permission denied" in err


_STALLING_RANKS = """
import sys, time, torch
from hybridvit.engine.distributed import all_reduce_sum, init_distributed
info = init_distributed(torch.device("cpu"), timeout_s=3)
all_reduce_sum(torch.ones(1), info)
if info.rank == 1:
    time.sleep(20)  # stalls: never joins the next collective
    sys.exit(0)
try:
    all_reduce_sum(torch.ones(1), info)
except Exception as err:
    print(type(err).__name__, err)
"""


def test_a_stalled_rank_is_named_after_the_timeout(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29757", "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", _STALLING_RANKS], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    out, err = procs[0].communicate(timeout=300)
    procs[1].kill()
    procs[1].communicate()
    assert "DistributedTimeoutError rank 0: rank(s) 1 did not join all_reduce within 3s (--dist-timeout)" in out, out + err
