"""Time a training run's exported files side by side (docs/export.md, "INT8"): eager, and every
MODEL*.xml / MODEL*.onnx `hybridvit export RUN_DIR [--quantize int8]` wrote into it.

    OMP_NUM_THREADS=1 python tools/exported_latency.py runs/digits --batch 1 8 32 --rounds 20

`hybridvit bench` builds models by name and calibrates INT8 on random images; this times the files
the accuracy check (`hybridvit eval --exported`) ran. Alternating rounds, one thread, medians, each
back end's ratio to OpenVINO f32 (the first .xml without `_int8`). `--hints` adds OpenVINO's
THROUGHPUT performance hint beside the LATENCY one every runtime here compiles with.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from hybridvit.engine.inference import load_trained
from hybridvit.export.backends import open_exported, require


def throughput_runtime(path: Path):
    ov = require("openvino", "the THROUGHPUT hint")
    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "THROUGHPUT"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x.numpy()}, share_inputs=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--hints", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = load_trained(str(args.run_dir))
    files = sorted(args.run_dir.glob(f"{trained.info['model']}*.xml")) + sorted(args.run_dir.glob(f"{trained.info['model']}*.onnx"))
    cells = {"eager": (trained.model.eval(), "f32")}
    for path in files:
        runtime = open_exported(path)
        cells[f"{runtime.backend} {path.name}"] = (runtime, runtime.precision)
        if args.hints and path.suffix == ".xml":
            cells[f"openvino THROUGHPUT {path.name}"] = (throughput_runtime(path), "")
    reference = next((k for k in cells if k.startswith("openvino") and "_int8" not in k), "eager")
    res = trained.img_size
    for batch in args.batch:
        x = torch.rand(batch, 3, res, res)
        times: dict[str, list[float]] = {k: [] for k in cells}
        repeats = max(1, 32 // batch)  # about the same number of images per timing
        with torch.inference_mode():
            for run, _ in cells.values():
                run(x)
            for _ in range(args.rounds):
                for name, (run, _) in cells.items():
                    start = time.perf_counter()
                    for _ in range(repeats):
                        run(x)
                    times[name].append((time.perf_counter() - start) / repeats * 1e3)
        base = statistics.median(times[reference])
        for name, (_, precision) in cells.items():
            ms = statistics.median(times[name])
            print(f"batch {batch:3d}  {name:48s} {ms:8.2f} ms  {ms / base:5.2f}x {reference.split()[0]} f32  {precision}")


if __name__ == "__main__":
    main()
