"""DistributedDataParallel glue for `torchrun`: gloo on CPU, nccl on GPU; a no-op in a single process."""
from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..argtypes import device as check_device
from ..errors import HybridViTError

DEFAULT_TIMEOUT_S = 600.0  # torch's default is 30 minutes


class DistributedTimeoutError(HybridViTError):
    """A collective that another rank never joined within the timeout (a stalled or dead process)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device, timeout_s: float | None = None) -> DistInfo:
    """Join the process group that `torchrun` describes in the environment (WORLD_SIZE, RANK, ...).

    A collective that some rank does not join within `timeout_s` raises DistributedTimeoutError.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    timeout_s = timeout_s or DEFAULT_TIMEOUT_S
    if world_size == 1:
        return DistInfo(timeout_s=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), timeout_s)


_calls = 0  # collectives this process entered; published in the rendezvous store to name a rank that stopped


def _collective(name: str, info: DistInfo, run: Callable[[], Any]) -> Any:
    """Run one collective; on a timeout, name the ranks that never entered it (their count is behind ours)."""
    global _calls
    _calls += 1
    store = dist.distributed_c10d._get_default_store()
    store.set(f"hybridvit/calls/{info.rank}", str(_calls))
    try:
        return run()
    except RuntimeError as err:
        if "time" not in str(err).lower():  # gloo: "Timed out waiting", nccl: "Watchdog caught collective operation timeout"
            raise
    store.set_timeout(datetime.timedelta(seconds=5))
    behind = []
    for rank in range(info.world_size):
        try:
            if rank != info.rank and int(store.get(f"hybridvit/calls/{rank}")) < _calls:
                behind.append(str(rank))
        except RuntimeError:  # the store lives in rank 0: it may be the one that stopped
            behind.append(f"{rank} (unreachable)")
    who = f"rank(s) {', '.join(behind)}" if behind else "another rank"
    raise DistributedTimeoutError(
        f"rank {info.rank}: {who} did not join {name} within {info.timeout_s:g}s (--dist-timeout): "
        "a process stalled or died"
    ) from None


def resolve_device(requested: str | None) -> torch.device:
    """`requested`, else the local GPU under torchrun (LOCAL_RANK), else cuda:0 or cpu."""
    if requested:
        try:
            device = torch.device(check_device(requested))
        except argparse.ArgumentTypeError as err:
            raise HybridViTError(f"device: {err}") from None
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for chaining)."""
    if info.enabled:
        _collective("all_reduce", info, lambda: dist.all_reduce(values, op=dist.ReduceOp.SUM))
    return values


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """One picklable object from every rank, in rank order."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    _collective("all_gather_object", info, lambda: dist.all_gather_object(out, obj))
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's picklable `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        _collective("barrier", info, dist.barrier)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
