"""Validation: loss, top-1 and top-5 over a (possibly sharded) loader, summed over ranks."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: float16 on CUDA, bfloat16 elsewhere."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    info: DistInfo = DistInfo(),
    amp: bool = False,
) -> dict[str, float]:
    """Mean cross-entropy and top-1/top-5 accuracy (%) of `model` on `loader`, over every rank's shard."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, count
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable (see data.datasets.skip_unreadable)
            continue
        images, targets = batch[0].to(device), batch[1].to(device)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == targets[:, None]
        sums += torch.stack([
            F.cross_entropy(logits, targets, reduction="sum").double(),
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            torch.tensor(float(len(targets)), dtype=torch.float64, device=device),
        ])
    loss, top1, top5, count = all_reduce_sum(sums, info).tolist()
    n = max(count, 1.0)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "count": int(count)}
