"""Balanced hierarchical clustering of BOAT (Yu et al., BMVC 2022, arXiv 2201.13027, §3.2 "balanced
hierarchical clustering"), batched over every (image, head) and every group of a level.

Follows the reference `ContentAttention.forward` of mahaoyuHKU/pytorch-boat (spec shared/specs/boat.md §2):
at each level every group of n tokens is split into two halves of n/2 by a soft spherical two-centre
k-means, then the tokens are sorted by the ratio of their shifted cosine similarities to the two centres
and cut at the middle, so all groups stay exactly equal in size. No parameters, no gradient.

The clustering runs in float64 (float32 on MPS, which has no float64): the median cut is discontinuous,
so float32 rounding that differs between back ends (eager, onnxruntime, GPU kernels) moved near-tie
tokens into the sibling group in about half of the random inputs tried; in float64 none did. Rounding
upstream of the clustering (in the queries) can still do so, which is why export checks replay the cuts
(`replay_cuts`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F


_replayed_orders: ContextVar[list[torch.Tensor] | None] = ContextVar("replayed_orders", default=None)


@contextmanager
def replay_cuts(orders: Iterable[torch.Tensor]) -> Iterator[None]:
    """Inside the block, each clustering level takes its sort order from `orders`, in call order,
    instead of sorting its own keys.

    Export checks use this to give eager the cuts that onnxruntime made. Comparing outputs is only
    meaningful when both sides cut the same way. Per thread (a context variable); for verification only.
    """
    queue = list(orders)
    token = _replayed_orders.set(queue)
    try:
        yield
    finally:
        _replayed_orders.reset(token)
    if queue:
        raise RuntimeError(f"{len(queue)} replayed cluster orders were left unused")


def _sort_order(key: torch.Tensor) -> torch.Tensor:
    """Ascending order of `key` [g, n] along n, or the next replayed order (see `replay_cuts`)."""
    queue = _replayed_orders.get()
    if queue is None:
        return key.argsort(dim=-1)
    if not queue:
        raise RuntimeError("the model made more clustering cuts than were replayed")
    return queue.pop(0).to(key.device).view_as(key)


def cluster_levels(num_tokens: int, group_size: int) -> int | None:
    """Number of binary splits L with `num_tokens == group_size * 2**L`, or None when there is none."""
    if num_tokens % group_size:
        return None
    groups = num_tokens // group_size
    levels = int(math.log2(groups))
    return levels if 2**levels == groups else None


@torch.no_grad()
def balanced_hierarchical_clustering(
    x: torch.Tensor, levels: int, iters: int = 2, temperature: float = 100.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the N tokens of every row of `x` [G, N, D] into 2**levels equal groups of similar tokens.

    Returns `perm` [G, N] (token indices, group after group: group j is `perm[:, j*n:(j+1)*n]`, and
    siblings of the last split are groups 2i and 2i+1) and its inverse `inv` (`perm.gather(1, inv)`
    is the identity). Each level (Alg. 1): centres start as the means of the first and second half of
    the current order, `iters` rounds of soft assignment (softmax of `temperature` x cosine) and
    re-estimation, then a sort of (cos_0 + 1) / (cos_1 + 1) ascending and a cut at the middle.
    """
    G, N, D = x.shape
    x = x.to(torch.float32 if x.device.type == "mps" else torch.float64)
    perm = torch.arange(N, device=x.device).repeat(G)  # flat [G * N], regrouped like the rows of x
    for _ in range(levels):
        g, n, _ = x.shape  # g = G * 2**level groups of n tokens
        inv_norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12).reciprocal()  # cosine = (x @ c) / |x|
        centres = F.normalize(x.view(g, 2, n // 2, D).mean(dim=2), dim=-1)  # [g, 2, D]
        for _ in range(iters):
            cos = (x @ centres.transpose(1, 2)) * inv_norm  # [g, n, 2]
            # softmax over the two centres, as a sigmoid of the difference (CPU softmax over 2 is slow)
            near_first = torch.sigmoid(temperature * (cos[..., 0] - cos[..., 1]))
            assign = torch.stack((near_first, 1 - near_first), dim=1)  # [g, 2, n]
            centres = F.normalize(assign @ x, dim=-1)
        cos = (x @ centres.transpose(1, 2)) * inv_norm
        order = _sort_order((cos[..., 0] + 1) / (cos[..., 1] + 1))  # [g, n]
        rows = (order + n * torch.arange(g, device=x.device).unsqueeze(1)).flatten()  # row gathers beat gather()
        perm = perm.index_select(0, rows)
        x = x.reshape(g * n, D).index_select(0, rows).view(2 * g, n // 2, D)
    perm = perm.view(G, N)
    inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(N, device=x.device).expand(G, N))
    return perm, inv


def overlapping_key_index(
    num_groups: int, group_size: int, overlap: int, device: torch.device | None = None
) -> torch.Tensor:
    """Positions (in clustered order) of the keys of each group: [num_groups, group_size + overlap].

    Overlap at the last level only (§3.2, "m + n" tokens per group): of two sibling groups, the first
    also sees the first `overlap` tokens of the second and the second the last `overlap` tokens of the
    first, i.e. the two halves of their parent's sorted list widened towards the cut by `overlap`.
    """
    start = torch.arange(num_groups, device=device) * group_size
    start = start - (torch.arange(num_groups, device=device) % 2) * overlap  # odd siblings reach back
    return start.unsqueeze(1) + torch.arange(group_size + overlap, device=device)
