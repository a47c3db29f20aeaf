"""Latency and peak memory of one forward pass, measured side by side.

Latency: every (model, input) case gets `warmup` untimed runs, then `rounds` timed rounds; in each
round every case runs once, in an order that rotates per round, so load changes on a shared machine
hit all models and resolutions alike. We report the median and the 90th percentile of the per-round times.

Peak memory: the most bytes held at once by the allocator during one forward pass, over what was
held before it (weights and input excluded).
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
- CPU: the allocation and free events that `torch.profiler` records with `profile_memory=True`,
  summed in time order. Unlike the process RSS (which glibc and oneDNN caches make depend on what
  ran before), this is the same on every run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_side_by_side(
    cases: Sequence[tuple[torch.nn.Module, torch.Tensor]], warmup: int = 3, rounds: int = 10
) -> list[Timing]:
    """Time `model(x)` for each (model, x) case, running every case once per round, in rotating order."""
    if not cases:
        return []
    sync = _sync(cases[0][1].device)
    times: list[list[float]] = [[] for _ in cases]
    with torch.inference_mode():
        for model, x in cases:
            for _ in range(warmup):
                model(x)
        sync()
        for r in range(rounds):
            for k in range(len(cases)):
                i = (k + r) % len(cases)
                model, x = cases[i]
                start = time.perf_counter()
                model(x)
                sync()
                times[i].append((time.perf_counter() - start) * 1e3)
    return [Timing(float(np.median(t)), float(np.percentile(t, 90))) for t in times]


def peak_memory_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated during one `model(x)` above what was allocated before it."""
    with torch.inference_mode():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            before = torch.cuda.memory_allocated(x.device)
            model(x)
            torch.cuda.synchronize(x.device)
            return torch.cuda.max_memory_allocated(x.device) - before
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    return profiled_peak_bytes(prof)


def profiled_peak_bytes(prof: profile) -> int:
    """Peak of the running sum of the allocations and frees a memory-profiling `prof` recorded."""
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak
