"""Reliability: a kill or a full disk at any moment of a checkpoint write leaves one complete
checkpoint, from which `--resume` continues bit-exactly; user mistakes are one-line errors."""
from __future__ import annotations

import csv
import errno
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridvit import checkpoint as checkpoint_io
from hybridvit.cli import main
from hybridvit.engine import checkpointing as ckpt
from hybridvit.engine.train import TrainConfig, Trainer

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
