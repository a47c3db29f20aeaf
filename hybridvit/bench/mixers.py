"""`hybridvit bench --attn ... --tokens ...`: each token mixer alone against the token count (the figure the
XFormer paper draws for XFA vs MHSA), and whole models with each mixer swapped in (`MODEL@MIXER`).

A mixer row times `mixer(x, hw)` on random tokens [batch, N, dim] lying on an h x w grid (h the largest
divisor of N up to sqrt(N), so 256 / 1024 / 4096 / 16384 are 16² ... 128²), with the same side-by-side
rounds (`measure.time_side_by_side`), peak-memory pass and MAC counter (`flops.count_macs`) as the models.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn as nn

from ..layers.mixers import check_mixer, create_mixer
from .flops import count_macs, count_params
from .measure import peak_memory_bytes, time_side_by_side
from .runner import BenchConfig, BenchRow


def token_grid(num_tokens: int) -> tuple[int, int]:
    """(h, w) with h * w = num_tokens and h the largest divisor not above sqrt(num_tokens)."""
    h = next(d for d in range(math.isqrt(num_tokens), 0, -1) if num_tokens % d == 0)
    return h, num_tokens // h


class MixerOnTokens(nn.Module):
    """A mixer called with a fixed token grid, so the model-shaped runner and counters can take it."""

    def __init__(self, mixer: nn.Module, hw: tuple[int, int]) -> None:
        super().__init__()
        self.mixer = mixer
        self.hw = hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(x, self.hw)


def run_mixer_bench(
    mixers: Sequence[str], tokens: Sequence[int], cfg: BenchConfig, dim: int = 144, num_heads: int = 4, log=print
) -> list[BenchRow]:
    """One row per (mixer, token count, batch); all cells of a batch size timed in the same rounds."""
    for name in mixers:
        check_mixer(name, "the mixer bench")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    cells = {(m, n): MixerOnTokens(create_mixer(m, dim, num_heads, slot="the mixer bench"), token_grid(n))
             for m in mixers for n in tokens}
    for module in cells.values():
        module.eval().to(device)
    macs = {  # on `meta` tensors: no arithmetic
        (m, n): count_macs(copy.deepcopy(module).to("meta"), torch.empty(1, n, dim, device="meta"))
        for (m, n), module in cells.items()
    }
    rows = []
    for batch in cfg.batches:
        inputs = {n: torch.randn(batch, n, dim, device=device) for n in tokens}
        log(f"batch {batch}: timing {len(cells)} (mixer, tokens) cells side by side ...")
        timings = time_side_by_side([(cells[c], inputs[c[1]]) for c in cells], cfg.warmup, cfg.rounds)
        for (name, n), timing in zip(cells, timings):
            mem = peak_memory_bytes(cells[name, n], inputs[n]) / 2**20 if cfg.memory else None
            rows.append(BenchRow(
                name, "hybridvit", None, batch, count_params(cells[name, n]) / 1e6,
                gmacs=macs[name, n].total / 1e9, gmacs_no_attn=macs[name, n].without_attention / 1e9,
                latency_ms=timing.median_ms, latency_p90_ms=timing.p90_ms,
                throughput_img_s=batch * 1e3 / timing.median_ms, peak_mem_mb=mem, device=device.type,
                threads=threads, note=f"dim {dim}, {num_heads} heads, grid {'x'.join(map(str, token_grid(n)))}",
                tokens=n,
            ))
    order = {m: i for i, m in enumerate(mixers)}
    rows.sort(key=lambda r: (r.batch, r.tokens, order[r.model]))
    return rows
