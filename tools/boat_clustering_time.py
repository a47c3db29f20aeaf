"""BOAT's clustering share of the forward, timed directly (no profiler ranges), for docs/boat.md.

    PYTHONPATH=$PWD python tools/boat_clustering_time.py [--model boat_swin_tiny] [--batch 1 8] [--rounds 20]

One thread, `torch.inference_mode()`, 224x224. FSLA's clustering calls are wrapped in `time.perf_counter`
while whole forwards run (the first one is a warm-up): per forward, the time spent in the clustering
against the forward's own time, medians over `--rounds` forwards.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.bench.output import environment
from hybridvit.layers import fsla as fsla_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="boat_swin_tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=20, help="timed forwards at batch 1 (fewer at larger batches)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    clustering = fsla_module.balanced_hierarchical_clustering
    spent: list[float] = []

    def timed_clustering(*inputs):
        start = time.perf_counter()
        result = clustering(*inputs)
        spent.append(time.perf_counter() - start)
        return result

    print(f"{args.model}, {environment()['cpu']}, 1 thread, load {os.getloadavg()[0]:.2f}, {environment()['date']}")
    fsla_module.balanced_hierarchical_clustering = timed_clustering
    try:
        for batch in args.batch:
            x = torch.randn(batch, 3, 224, 224)
            forwards, shares, in_clustering = [], [], []
            with torch.inference_mode():
                model(x)
                for _ in range(max(3, args.rounds // batch)):
                    spent.clear()
                    start = time.perf_counter()
                    model(x)
                    forwards.append(time.perf_counter() - start)
                    in_clustering.append(sum(spent))
                    shares.append(in_clustering[-1] / forwards[-1])
            print(f"batch {batch}: forward {statistics.median(forwards) * 1e3:.1f} ms, clustering "
                  f"{statistics.median(in_clustering) * 1e3:.2f} ms in {len(spent)} calls, "
                  f"share {100 * statistics.median(shares):.1f}% (median of {len(forwards)} forwards)")
    finally:
        fsla_module.balanced_hierarchical_clustering = clustering


if __name__ == "__main__":
    main()
