"""Multi-scale variable-batch sampler of MobileViT (paper §3.2; spec mobilevit.md §4), on timm's scheduler.

Built on `timm.data.ScheduledBatchSampler` (one transform choice per resolution) over a
`DistributedSampler` shard, so:
- each epoch shuffles the samples (torch generator seeded with seed + epoch) and the order of
  the resolutions (seed + 2 * epoch + 1): private RNGs, never the global `random` that keeps
  ml-cvnets' ranks in step only by luck (spec §4.5);
- every rank holds a shard of equal length, so every rank builds the same schedule: the same
  resolution and the same number of steps at every step, without any communication;
- the shards of the ranks are disjoint (the DistributedSampler pads with a few repeats when the
  dataset size is not a multiple of the world size).
"""
from __future__ import annotations

from itertools import islice
from typing import Iterator, Sequence

import numpy as np
from timm.data import ScheduledBatchSampler, ScheduledTransformDataset
from torch.utils.data import DistributedSampler

BATCH_RULES = ("v0.1", "head")

__all__ = [
    "BATCH_RULES",
    "MultiScaleBatchSampler",
    "ScheduledTransformDataset",
    "batch_size_for",
    "multi_scale_resolutions",
]


def make_divisible(value: float, divisor: int) -> int:
    """MobileNet rounding to the nearest multiple of `divisor` (never below 90% of `value`)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def multi_scale_resolutions(
    base: int = 256, min_res: int = 160, max_res: int = 320, num_scales: int = 5, divisor: int = 32
) -> list[int]:
    """Sorted square resolutions: linspace(min, max, n) plus the base, snapped to `divisor` (spec §4.2).

    The defaults give MobileViT's {160, 192, 256, 288, 320}.
    """
    values = list(np.linspace(min_res, max_res, num_scales)) + [base]
    return sorted({make_divisible(v, divisor) for v in values})


def batch_size_for(resolution: int, base_resolution: int, base_batch_size: int, rule: str = "v0.1") -> int:
    """b_t = b * (H_n W_n) / (H_t W_t) (paper §3.2), with b the batch at the base resolution.

    `rule="v0.1"` ([cv0.1] `utils.py` L66-68, which trained the released weights) never shrinks
    below b, so larger crops keep batch b; `rule="head"` ([cv] HEAD L62) shrinks them too.
    Both truncate `round(x, 2)` as ml-cvnets does (spec §4.3).
    """
    if rule not in BATCH_RULES:
        raise ValueError(f"unknown batch rule {rule!r}; choose one of {', '.join(BATCH_RULES)}")
    scaled = int(round(base_resolution**2 * base_batch_size / resolution**2, 2))
    return max(base_batch_size if rule == "v0.1" else 1, scaled)


class MultiScaleBatchSampler(ScheduledBatchSampler):
    """Yields batches of `(sample index, resolution index)`; one resolution, and its batch size, per batch.

    Pair it with `ScheduledTransformDataset(dataset, [transform at r for r in resolutions])`.
    A single resolution gives an ordinary shuffled, sharded batch sampler. `start_step` skips
    the first batches of the epoch, for an exact resume mid-epoch.
    """

    def __init__(
        self,
        dataset_len: int,
        resolutions: Sequence[int],
        base_resolution: int,
        base_batch_size: int,
        rule: str = "v0.1",
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        even_batches: bool = False,
    ) -> None:
        self.resolutions = tuple(sorted(resolutions))
        sizes = [batch_size_for(r, base_resolution, base_batch_size, rule) for r in self.resolutions]
        if even_batches:  # mixup/cutmix flip the batch in pairs
            sizes = [max(2, s - s % 2) for s in sizes]
        shard = DistributedSampler(range(dataset_len), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        super().__init__(shard, sizes, seed=seed, drop_last=drop_last)
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch (reshuffles samples and resolutions) and the first batch to yield."""
        super().set_epoch(epoch)
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return islice(super().__iter__(), self.start_step, None)

    def resolution_schedule(self) -> list[int]:
        """The resolution of each batch of the current epoch, in order."""
        return [self.resolutions[batch[0][1]] for batch in ScheduledBatchSampler.__iter__(self)]
