"""`hybridvit bench MODEL... [--res ...] [--batch ...] [--peers] [--all] [--attn MIXER... [--tokens N...]] --out DIR`."""
from __future__ import annotations

import argparse

from ..argtypes import device, non_negative_int, positive_int


def cmd_bench(args: argparse.Namespace) -> None:
    from ..errors import HybridViTError
    from .output import environment, rows_table, write_results
    from .runner import BenchConfig, resolve_models, run_bench

    if args.task == "detection" and args.head is None:
        args.head = "ssdlite"
    model_names = args.model
    from ..tasks.segmentation import SEGMENTATION_HEADS

    if args.head in SEGMENTATION_HEADS:  # a segmentation head implies --task segmentation
        args.task = "segmentation"
    if args.task == "segmentation":  # segmenters are HEAD:BACKBONE names; --head puts that head on bare names
        model_names, args.head = segmenter_names(args.model, args.head), None
    names = resolve_models(model_names, all_models=args.all, peers=args.peers, head=args.head)
    if args.attn:  # each model with each mixer swapped in; the mixers alone against the token count
        names = [f"{name}@{mixer}" for name in names for mixer in args.attn]
        resolve_models(names, head=args.head)
        if args.tokens is None and not names:
            args.tokens = [256, 1024, 4096, 16384]
    elif args.tokens:
        raise HybridViTError("--tokens times token mixers: name them with --attn (e.g. --attn mhsa xfa)")
    if not names and not args.tokens:
        raise HybridViTError("no models to benchmark: name some, or pass --all / --peers / --attn")
    cfg = BenchConfig(
        resolutions=args.res, batches=args.batch, warmup=args.warmup, rounds=args.rounds, device=args.device,
        threads=args.threads, memory=not args.no_memory, head=args.head, backends=args.backend,
        workdir=args.workdir,
    )
    def log(msg: str) -> None:
        print(msg, flush=True)

    rows = []
    if args.tokens:
        from .mixers import run_mixer_bench

        rows += run_mixer_bench(args.attn, args.tokens, cfg, dim=args.dim, num_heads=args.heads, log=log)
    if names:
        rows += run_bench(names, cfg, log=log)
    env = environment()
    print(f"\ntorch {env['torch']}, {cfg.device}, {env['threads']} thread(s); "
          f"median of {cfg.rounds} alternating rounds; GMACs per image")
    print(rows_table(rows, markdown=args.markdown))
    paths = write_results(rows, args.out, markdown=args.markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def segmenter_names(names: list[str], head: str | None) -> list[str]:
    """`--task segmentation`: NAME -> HEAD:NAME with `--head`; every name must end up HEAD:BACKBONE."""
    from ..errors import HybridViTError
    from ..tasks import SEGMENTATION_HEADS

    if head is not None and head not in SEGMENTATION_HEADS:
        raise HybridViTError(f"--task segmentation takes a segmentation --head ({', '.join(SEGMENTATION_HEADS)}), not {head}")
    out = [name if ":" in name or head is None else f"{head}:{name}" for name in names]
    bare = [name for name in out if ":" not in name]
    if bare:
        raise HybridViTError(f"--task segmentation times segmenters: name them HEAD:BACKBONE or pass --head "
                             f"({', '.join(SEGMENTATION_HEADS)}); got {', '.join(bare)}")
    return out


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from ..tasks.detection import DETECTION_HEADS
    from ..tasks.segmentation import SEGMENTATION_HEADS

    p = subparsers.add_parser("bench", help="params, MACs, latency, throughput and memory vs resolution")
    p.add_argument("model", nargs="*", help="hybridvit or timm model names")
    p.add_argument("--all", action="store_true", help="every hybridvit model")
    p.add_argument("--peers", action="store_true",
                   help="add timm's nearest models (MobileViT, MobileNetV3, ...); with --head, torchvision's SSDLite")
    p.add_argument("--task", choices=("classification", "detection", "segmentation"), default="classification",
                   help="detection: time detectors (--head, default ssdlite); --head alone implies it. "
                        "segmentation: time segmenters named HEAD:BACKBONE (or --head HEAD), the paper's class count")
    p.add_argument("--head", choices=sorted(DETECTION_HEADS) + sorted(SEGMENTATION_HEADS),
                   help="time detectors: this head (80 classes) around each model; --res 320 for SSDLite; "
                        "with --task segmentation, a segmentation head")
    p.add_argument("--res", type=positive_int, nargs="+", default=[224, 256], help="input resolutions (default 224 256)")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs per model (default 3)")
    p.add_argument("--rounds", type=positive_int, default=10, help="timed rounds; each runs every model once (default 10)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads, fixed for the run (default 1)")
    p.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--backend", nargs="+", default=["eager"],
                   help="back ends to time side by side (default eager): eager compile onnxruntime openvino "
                        "openvino-bf16 openvino-int8 onnxruntime-int8; INT8 ones calibrate on random images")
    p.add_argument("--attn", nargs="+", metavar="MIXER",
                   help="token mixers (mhsa xfa mosa fsla): each alone vs --tokens, and each swapped into the models")
    p.add_argument("--tokens", type=positive_int, nargs="+",
                   help="token counts for --attn (default 256 1024 4096 16384 when no model is named)")
    p.add_argument("--dim", type=positive_int, default=144, help="token width for --tokens (default 144)")
    p.add_argument("--heads", type=positive_int, default=4, help="heads for --tokens (default 4)")
    p.add_argument("--workdir", help="keep the exported ONNX / OpenVINO graphs here (default: a temporary folder)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table and write table.md")
    p.add_argument("--out", default="bench_results", help="output folder (default bench_results)")
    p.set_defaults(func=cmd_bench)
