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

import functools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

import numpy
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
    """Ascending order of `key` [g, n] along n, or the next replayed order (see `replay_cuts`; eager only)."""
    if torch.jit.is_scripting():
        return key.argsort(dim=-1)
    queue = _replayed_orders.get()
    if queue is None:
        if key.device.type == "cpu" and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            # numpy's vectorised argsort (x86-simd-sort) vs torch's scalar std::sort: 84 vs 421 us for [3, 3136]
            # float64 keys (Intel Xeon AVX-512, 1 thread; issue 14); the same order for distinct keys
            return torch.from_numpy(numpy.argsort(key.numpy(), axis=-1))
        return key.argsort(dim=-1)
    if not queue:
        raise RuntimeError("the model made more clustering cuts than were replayed")
    return queue.pop(0).to(key.device).view_as(key)


def clustering_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the clustering computes in: float64 (float32 on MPS, which has no float64)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def cluster_levels(num_tokens: int, group_size: int) -> int:
    """Number of binary splits L: the smallest with `group_size * 2**L >= num_tokens` (0 for one group).

    Where `num_tokens == group_size * 2**L` (the reference's only sizes) the groups hold exactly
    `group_size` tokens; otherwise they hold floor or ceil of num_tokens / 2**L real tokens, i.e. between
    group_size / 2 and group_size (see `cluster_capacity`).
    """
    levels = 0
    while group_size << levels < num_tokens:  # integers only: exact, and TorchScript has no math.log2
        levels += 1
    return levels


def cluster_capacity(num_tokens: int, levels: int) -> int:
    """Slots per leaf group: ceil(num_tokens / 2**levels). Leaves of fewer real tokens are padded to it."""
    return -(-num_tokens // (1 << levels))


def padding_plan(
    num_tokens: int, levels: int, device: Optional[torch.device] = None
) -> Optional[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Per level: (pad slots [k, n] bool, initial half weights [k, 2, n], layout [k, n]); None without padding.

    Padding (num_tokens not a multiple of 2**levels): every group of n slots at a level holds r real tokens
    (its real tokens first, pads last), r = floor or ceil of num_tokens / 2**level, and the split sends
    ceil(r / 2) real tokens to the first child and floor(r / 2) to the second. The initial centres are the
    means of those two parts of the current order. After the sort (pads sorted last), `layout` gathers
    each child's real tokens and its share of the pads: pads last in both children, except after the last
    split, where the first child keeps its pads in front so that siblings' real tokens meet at the cut
    and the `overlap` keys on either side of it are real tokens (see `padded_leaf_slots`).
    """
    if num_tokens % (1 << levels) == 0:
        return None
    capacity = cluster_capacity(num_tokens, levels)
    real = torch.tensor([num_tokens], device=device)
    plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for level in range(levels):
        n = capacity << (levels - level)
        half, slot = n // 2, torch.arange(n, device=device)
        first = (real + 1) // 2  # real tokens of the first child
        second = real - first
        weights = torch.stack([slot < first[:, None], (slot >= first[:, None]) & (slot < real[:, None])], dim=1)
        # child slot -> position in the sorted group (real tokens at 0..real-1, pads at real..n-1)
        child = slot[:half].expand(len(real), half)
        pads_one, pads_two = real[:, None] + child - first[:, None], real[:, None] + half + child - real[:, None]
        if level < levels - 1:  # pads last in both children
            child_one = torch.where(child < first[:, None], child, pads_one)
        else:  # first child: pads in front, real tokens next to the cut
            lead = half - first[:, None]
            child_one = torch.where(child < lead, real[:, None] + child, child - lead)
        child_two = torch.where(child < second[:, None], first[:, None] + child, pads_two)
        plan.append((slot >= real[:, None], weights.double(), torch.cat([child_one, child_two], dim=1)))
        real = torch.stack([first, second], dim=1).flatten()
    return plan


_cached_padding_plan = functools.lru_cache(maxsize=32)(padding_plan)  # per (N, levels, device), eager only


def padded_leaf_slots(num_tokens: int, levels: int, device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Which slots of the clustered order hold padding, [2**levels * capacity] bool; None without padding.

    Even leaves have their pads in front, odd leaves at the end (`padding_plan`).
    """
    if num_tokens % (1 << levels) == 0:
        return None
    capacity = cluster_capacity(num_tokens, levels)
    real = torch.tensor([num_tokens], device=device)
    for _ in range(levels):
        first = (real + 1) // 2
        real = torch.stack([first, real - first], dim=1).flatten()
    slot = torch.arange(capacity, device=device)
    pads = torch.where(torch.arange(len(real), device=device)[:, None] % 2 == 0, slot < capacity - real[:, None], slot >= real[:, None])
    return pads.flatten()


def balanced_hierarchical_clustering(
    x: torch.Tensor, levels: int, iters: int = 2, temperature: float = 100.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the N tokens of every row of `x` [G, N, D] into 2**levels balanced groups of similar tokens
    (leading dims [..., N, D] are flattened into the G rows).

    Returns `perm` [G, M] (token indices, group after group: group j is `perm[:, j*c:(j+1)*c]` with
    c = `cluster_capacity(N, levels)` and M = c * 2**levels; siblings of the last split are groups 2i and
    2i+1) and its inverse `inv` (`perm.gather(1, inv)` is the identity). Where N < M the rows are padded
    with M - N zero tokens (indices N..M-1, placed by `padding_plan`, see `padded_leaf_slots`), which
    never move a centre and never join a group's real tokens: the groups' real-token counts differ by
    at most one. Each level (Alg. 1): centres start as the means of the first and second half of the
    current order, `iters` rounds of soft assignment (softmax of `temperature` x cosine) and
    re-estimation, then a sort of (cos_0 + 1) / (cos_1 + 1) ascending and a cut at the middle. No gradient.
    """
    with torch.no_grad():
        return _clustering(x, levels, iters, temperature)


def _rows_per_chunk(rows: int, row_bytes: int, chunk_bytes: int = 2_500_000) -> int:
    """How many (image, head) rows are clustered together: as many as fit in `chunk_bytes` of float64
    queries, so that the ~8 passes of each level over them run from cache (BOAT-Swin-T at batch 8, AMD
    EPYC, 1 thread: 0.67x the time of all 24 x 3136 stage-1 rows at once; issue 14). All rows while a
    graph is traced or exported: the batch size is symbolic there, and a loop over chunks would fix it."""
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or torch.compiler.is_exporting() or _replayed_orders.get() is not None:
            return max(rows, 1)  # replayed orders (`replay_cuts`) hold all rows too
    return max(1, min(rows, chunk_bytes // max(row_bytes, 1)))


def _clustering(x: torch.Tensor, levels: int, iters: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    N, D = x.shape[-2], x.shape[-1]
    if torch.jit.is_scripting():
        plan = padding_plan(N, levels, x.device)
    else:
        plan = _cached_padding_plan(N, levels, x.device)
    G = x.numel() // max(N * D, 1)
    per_chunk = _rows_per_chunk(G, N * D * 8)
    if per_chunk >= G:
        return _cluster_rows(x, levels, iters, temperature, plan)
    perms: list[torch.Tensor] = []
    invs: list[torch.Tensor] = []
    for chunk in x.reshape(G, N, D).split(per_chunk):  # a loop over groups of (image, head) rows, not over tokens
        perm, inv = _cluster_rows(chunk, levels, iters, temperature, plan)
        perms.append(perm)
        invs.append(inv)
    return torch.cat(perms), torch.cat(invs)


def _cluster_rows(
    x: torch.Tensor,
    levels: int,
    iters: int,
    temperature: float,
    plan: Optional[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clustering of the rows of x [..., N, D] (see `balanced_hierarchical_clustering`)."""
    N, D = x.shape[-2], x.shape[-1]
    x = x.to(clustering_dtype(x), memory_format=torch.contiguous_format, copy=True).view(-1, N, D)  # one copy, ours
    G = x.shape[0]
    if plan is not None:
        x = F.pad(x, (0, 0, 0, (cluster_capacity(N, levels) << levels) - N))  # zero tokens: no say in a centre
    M = x.shape[1]
    inv_norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12).reciprocal()  # [G, M]: cosine = (x . c) / |x|; moves with x
    perm = torch.arange(M, device=x.device).repeat(G)  # flat [G * M], regrouped like the rows of x
    # the token moves alternate between two buffers: a fresh 2.4 MB tensor per level (stage 1) cost page faults,
    # batch 1 clustering 0.90x the time with the buffers (AMD EPYC, 1 thread; issue 14)
    spare = torch.empty_like(x) if levels > 1 else x
    for level in range(levels):
        k = 1 << level  # groups per row
        g, n = G * k, M // k
        xs, w = x.view(g, n, D), inv_norm.view(g, 1, n)
        if plan is None:  # the normalised sums of the halves are the normalised means
            halves = xs.view(g, 2, n // 2, D).sum(dim=2)
        else:
            halves = (plan[level][1].to(x.dtype) @ xs.view(G, k, n, D)).view(g, 2, D)
        centres = F.normalize(halves, dim=-1)  # [g, 2, D]
        total = halves.sum(dim=1, keepdim=True)  # every real token is in one half, pads are zero; 2nd centre: total - 1st
        tokens_t = xs.transpose(1, 2)  # [g, D, n]: row vector @ x^T is the fastest CPU matmul of these shapes
        sharpness = w * -temperature  # [g, 1, n], negative: centres.diff(dim=1) is c_1 - c_0
        for _ in range(iters):
            # softmax over the two centres = sigmoid(temperature * (cos_0 - cos_1)); one dot product per token
            near_first = torch.sigmoid((centres.diff(dim=1) @ tokens_t) * sharpness)  # [g, 1, n]
            first = near_first @ xs  # [g, 1, D]
            centres = F.normalize(torch.cat((first, total - first), dim=1), dim=-1)
        cos = (centres @ tokens_t) * w  # [g, 2, n]
        key = (cos[:, 0] + 1) / (cos[:, 1] + 1)
        if plan is None:
            order = _sort_order(key)  # [g, n]
        else:
            is_pad, _, layout = plan[level]
            order = _sort_order(key.view(G, k, n).masked_fill(is_pad, float("inf")).view(g, n))  # pads sort last
            order = order.view(G, k, n).gather(-1, layout.expand(G, -1, -1)).view(g, n)
        rows = (order + n * torch.arange(g, device=x.device).unsqueeze(1)).flatten()  # row gathers beat gather()
        perm = perm.index_select(0, rows)
        if level < levels - 1:  # the last level's order is all that is needed of it
            torch.index_select(x.view(g * n, D), 0, rows, out=spare.view(g * n, D))
            x, spare = spare, x
            inv_norm = inv_norm.view(g * n).index_select(0, rows).view(G, M)
    perm = perm.view(G, M)
    inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(M, device=x.device).expand(G, M))
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
