"""Two measurements behind the README's timm section, one model per family, on CPU.

- `memory`: peak bytes allocated during one training step (forward + backward, batch 8) with and without
  `set_grad_checkpointing()`, from torch.profiler's allocation events as `hybridvit bench` measures memory
  (weights, gradients of earlier steps and the input are held before the step and not counted).
- `compile`: eager vs `torch.compile(model)` latency at batch 1, timed side by side in alternating rounds
  by `hybridvit.bench.measure.time_side_by_side` (medians and ratios).

Run: OMP_NUM_THREADS=1 python tools/timm_contract_measure.py memory|compile [--res 224] [--batch 8]
"""
from __future__ import annotations

import argparse
import warnings

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import hybridvit  # noqa: F401  (registers the models)
from hybridvit.bench.measure import profiled_peak_bytes, time_side_by_side

FAMILIES = {  # the smallest model of each family
    "mobilevit": "hv_mobilevit_xxs",
    "xformer": "xformer_xxs",
    "mocovit": "mocovit_050",
    "ceit": "ceit_tiny_patch16_224",
    "boat-swin": "boat_swin_tiny",
    "boat-cswin": "boat_cswin_tiny",
}


def train_step_peak_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Peak bytes allocated during `model(x).mean().backward()` over what was allocated before it."""
    model.zero_grad(set_to_none=False)  # gradient buffers exist before the step
    model(x).mean().backward()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x).mean().backward()
    return profiled_peak_bytes(prof)


def memory(res: int, batch: int) -> None:
    print(f"| family | model | input | peak MiB, plain | peak MiB, grad checkpointing | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for family, name in FAMILIES.items():
        size = 224 if family.startswith("boat") else res
        model = timm.create_model(name).train()
        x = torch.randn(batch, 3, size, size)
        plain = train_step_peak_bytes(model, x)
        model.set_grad_checkpointing(True)
        ckpt = train_step_peak_bytes(model, x)
        print(f"| {family} | {name} | {batch}x3x{size}x{size} | {plain / 2**20:.0f} | {ckpt / 2**20:.0f} "
              f"| {ckpt / plain:.2f} |", flush=True)


def compile_speedup(res: int, rounds: int) -> None:
    print("| family | model | input | eager ms | compiled ms | speed-up |")
    print("|---|---|---|---:|---:|---:|")
    for family, name in FAMILIES.items():
        size = 224 if family.startswith("boat") else res
        model = timm.create_model(name).eval()
        x = torch.randn(1, 3, size, size)
        compiled = torch.compile(model)
        with torch.inference_mode():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
        eager_t, compiled_t = time_side_by_side([(model, x), (compiled, x)], warmup=3, rounds=rounds)
        print(f"| {family} | {name} | 1x3x{size}x{size} | {eager_t.median_ms:.1f} | {compiled_t.median_ms:.1f} "
              f"| {eager_t.median_ms / compiled_t.median_ms:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "compile"])
    parser.add_argument("--res", type=int, default=256, help="input side (BOAT: always 224)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the training step (memory)")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (compile)")
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if args.what == "memory":
        memory(args.res, args.batch)
    else:
        compile_speedup(args.res, args.rounds)


if __name__ == "__main__":
    main()
