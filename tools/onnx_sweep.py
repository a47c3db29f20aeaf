"""Export every registered model to ONNX and check it with onnxruntime (docs/export.md, "Full sweep").

    OMP_NUM_THREADS=1 python tools/onnx_sweep.py --out docs/onnx_sweep.csv [MODEL ...]

Per model: export seconds, whether `--dynamic` H/W verified, the max error at batch 2 and 3 (default
resolution) with BOAT's cluster orders replayed and without. Takes about 40 minutes on one CPU core.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

import hybridvit
from hybridvit.export import export_model
from hybridvit.export.onnx import onnx_max_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=hybridvit.list_models())
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    fields = ["model", "export_s", "dynamic_hw", "max_error", "max_error_unreplayed"]
    with open(args.out, "w", newline="") as f, tempfile.TemporaryDirectory() as tmp:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for name in args.models:
            torch.manual_seed(0)
            model = hybridvit.create_model(name).eval()
            res = hybridvit.paper_entry(name).input_size
            start = time.perf_counter()
            result = export_model(name, "onnx", out=Path(tmp) / f"{name}.onnx", dynamic=True, model=model)
            seconds = time.perf_counter() - start
            inputs = [torch.randn(batch, 3, res, res) for batch in (2, 3)]
            err, unreplayed = onnx_max_error(model, result.path, inputs)
            row = {"model": name, "export_s": f"{seconds:.0f}", "dynamic_hw": result.dynamic_hw,
                   "max_error": f"{err:.1e}", "max_error_unreplayed": f"{unreplayed:.1e}"}
            writer.writerow(row)
            f.flush()
            print(row, flush=True)


if __name__ == "__main__":
    main()
