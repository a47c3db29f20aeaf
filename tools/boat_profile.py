"""Where BOAT-Swin-T's CPU forward time goes: torch.profiler breakdown for docs/boat.md.

    PYTHONPATH=$PWD python tools/boat_profile.py --batch 1 8 [--rounds 3] [--model boat_swin_tiny]

One thread, `torch.inference_mode()`, 224x224. The parts are labelled from outside the model (the
library code carries no profiler ranges): each labelled module's or function's forward is wrapped in
`torch.profiler.record_function`, and a part's time is its range's CPU total over the profiled rounds,
as a share of the whole forward. Parts:

- clustering: `balanced_hierarchical_clustering` (all levels, inverse permutation);
- FSLA projections: FSLA's `qkv` and `proj` linears and the depthwise `get_v` conv;
- FSLA attention: the scaled-dot-product attention inside FSLA;
- FSLA gathers/scatters: the rest of FSLA (token moves into and out of the clustered order, masks);
- window attention: Swin's `WindowAttention` (qkv, attention, proj);
- windows: the rest of Swin's `_attn` (padding, roll, window partition / reverse);
- MLP: every block's `mlp`; the remainder (norms, residual adds, patch embed/merging, head) is "other".
"""
from __future__ import annotations

import argparse
import functools
import os
import time

import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.layers import fsla as fsla_module
from hybridvit.layers.fsla import FSLA

PARTS = ["clustering", "fsla_projections", "fsla_attention", "fsla_total", "window_attention", "swin_attn_total", "mlp"]


def _labelled(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def instrument(model: torch.nn.Module) -> None:
    """Wrap the parts' forwards in profiler ranges (instance attributes; the classes are untouched)."""
    fsla_module.balanced_hierarchical_clustering = _labelled("clustering", fsla_module.balanced_hierarchical_clustering)

    class _SDPA:  # FSLA's attention call only: FSLA looks it up on its module's `F`
        scaled_dot_product_attention = staticmethod(_labelled("fsla_attention", F.scaled_dot_product_attention))

        def __getattr__(self, name):
            return getattr(F, name)

    fsla_module.F = _SDPA()
    for module in model.modules():
        if isinstance(module, FSLA):
            module.forward = _labelled("fsla_total", module.forward)
            for sub in (module.qkv, module.proj, module.get_v):
                sub.forward = _labelled("fsla_projections", sub.forward)
        elif isinstance(module, WindowAttention):
            module.forward = _labelled("window_attention", module.forward)
        elif isinstance(module, SwinTransformerBlock):
            module._attn = _labelled("swin_attn_total", module._attn)
            module.mlp.forward = _labelled("mlp", module.mlp.forward)
        elif hasattr(module, "mlp") and hasattr(module, "content_attn"):  # BOAT-CSWin block
            module.mlp.forward = _labelled("mlp", module.mlp.forward)


def breakdown(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> dict[str, float]:
    """ms per forward of each part, and the whole forward, from the profiler."""
    with torch.inference_mode():
        model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(rounds):
                with torch.profiler.record_function("forward"):
                    model(x)
    totals = {e.key: e.cpu_time_total / 1e3 / rounds for e in prof.key_averages() if e.key in PARTS + ["forward"]}
    return {k: totals.get(k, 0.0) for k in PARTS + ["forward"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="boat_swin_tiny")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    instrument(model)
    print(f"{args.model}, 224x224, 1 thread, load {os.getloadavg()[0]:.2f}, {time.strftime('%H:%M UTC', time.gmtime())}")
    for batch in args.batch:
        t = breakdown(model, torch.randn(batch, 3, 224, 224), args.rounds)
        total = t["forward"]
        parts = {
            "clustering": t["clustering"],
            "FSLA gathers/scatters": t["fsla_total"] - t["clustering"] - t["fsla_projections"] - t["fsla_attention"],
            "FSLA projections (qkv, proj, dw conv)": t["fsla_projections"],
            "FSLA attention": t["fsla_attention"],
            "window attention": t["window_attention"],
            "windows (pad, roll, partition)": t["swin_attn_total"] - t["window_attention"],
            "MLP": t["mlp"],
        }
        parts["other (norms, residuals, merging, head)"] = total - sum(parts.values())
        print(f"\nbatch {batch}: forward {total:.1f} ms (profiled, {args.rounds} rounds)")
        print("| part | ms | share |\n|---|---:|---:|")
        for name, ms in parts.items():
            print(f"| {name} | {ms:.1f} | {100 * ms / total:.1f}% |")


if __name__ == "__main__":
    main()
