"""BOAT-Swin-T / Swin-T on a loaded CPU: one process alternates timm's Swin-T, BOAT-Swin-T with the
clustering of an older commit and BOAT-Swin-T with the current clustering (thread CPU time, medians), for
docs/boat.md. Thread time is less disturbed than wall time by other jobs' time slices on shared cores.

    PYTHONPATH=$PWD python tools/boat_ab.py --base 556f687 [--rounds 11 5]

The older `hybridvit/layers/clustering.py` is read with `git show BASE:...` and swapped in for FSLA's
clustering call only; both BOATs' outputs are asserted equal first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import time
import types

import timm
import torch

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.bench.output import environment
from hybridvit.layers import fsla as fsla_module


def load_base_clustering(commit: str) -> types.ModuleType:
    """`hybridvit/layers/clustering.py` as it was at `commit`, as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:hybridvit/layers/clustering.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"clustering_at_{commit}")
    exec(compile(source, f"{commit}:hybridvit/layers/clustering.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit whose clustering is the 'before'")
    parser.add_argument("--rounds", type=int, nargs=2, default=[11, 5], help="rounds at batch 1 and batch 8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base, current = load_base_clustering(args.base).balanced_hierarchical_clustering, fsla_module.balanced_hierarchical_clustering
    swin, boat = (timm.create_model(n).eval() for n in ("swin_tiny_patch4_window7_224", "boat_swin_tiny"))

    def boat_with(clustering):
        def run(x):
            fsla_module.balanced_hierarchical_clustering = clustering
            return boat(x)
        return run

    cells = {"swin": swin, "boat_base": boat_with(base), "boat_current": boat_with(current)}
    print(f"{environment()['cpu']}, 1 thread, load {os.getloadavg()[0]:.2f}, {environment()['date']}")
    for batch, rounds in zip((1, 8), args.rounds):
        x = torch.randn(batch, 3, 224, 224)
        times: dict[str, list[float]] = {name: [] for name in cells}
        with torch.inference_mode():
            assert torch.equal(cells["boat_base"](x), cells["boat_current"](x)), "the two clusterings differ"
            swin(x)
            for _ in range(rounds):
                for name, run in cells.items():
                    start = time.thread_time()
                    run(x)
                    times[name].append(time.thread_time() - start)
        ms = {name: sorted(t)[rounds // 2] * 1e3 for name, t in times.items()}
        print(f"batch {batch}, median of {rounds}: " + ", ".join(f"{n} {v:.0f} ms" for n, v in ms.items())
              + f"; BOAT / Swin-T: base {ms['boat_base'] / ms['swin']:.3f}, current {ms['boat_current'] / ms['swin']:.3f}")
    fsla_module.balanced_hierarchical_clustering = current


if __name__ == "__main__":
    main()
