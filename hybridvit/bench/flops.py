"""MAC counting with `torch.utils.flop_counter`, with and without attention matmuls.

Two fixes over the plain counter:
- The CPU kernel behind `F.scaled_dot_product_attention` has no FLOP formula in PyTorch, so its
  QK^T and AV matmuls went uncounted (timm `mobilevit_s`: 1.82 vs 2.00 GMACs). We register one.
- Papers count differently (GhostNet/MoCoViT and CeiT omit attention matmuls, MobileViT includes
  them), so the attention part is reported separately. Attention matmuls are the SDPA kernels plus
  every batched matmul (`bmm`/`baddbmm`): in these models those multiply two activations, while
  layers with weights run as `mm`/`addmm`/`convolution`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CUSTOM_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
_SDPA_OPS = {
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
}
_ATTENTION_OPS = _SDPA_OPS | {aten.bmm, aten.baddbmm}


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass (1 MAC = 2 FLOPs)."""

    total: int
    attention: int  # of which attention matmuls (QK^T, AV and other activation x activation products)

    @property
    def without_attention(self) -> int:
        return self.total - self.attention


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> MacCount:
    """Count MACs of `model(x)` in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FORMULAS) as counter:
            model(x)
    finally:
        model.train(was_training)
    per_op = counter.get_flop_counts()["Global"]
    total = sum(per_op.values())
    attention = sum(v for op, v in per_op.items() if op in _ATTENTION_OPS)
    return MacCount(total // 2, attention // 2)


def count_macs_at(model: torch.nn.Module, resolution: int | tuple[int, int], batch: int = 1) -> MacCount:
    """Count MACs at an input size without running real arithmetic: the model is copied to `meta`."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    in_chans = getattr(model, "in_chans", 3)
    meta_model = copy.deepcopy(model).to("meta")
    return count_macs(meta_model, torch.empty(batch, in_chans, h, w, device="meta"))


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
