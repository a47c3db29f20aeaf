"""`hybridvit bench`: params, MACs, latency, throughput and peak memory over resolutions and batches.

Models are hybridvit names or any timm name (the peers). All models of one run are measured in the
same process, side by side (see `measure`), so their numbers can be compared with each other.

With a detection head (`--head ssdlite`), each model is the backbone of that detector (80 COCO
classes) and the peer is torchvision's `ssdlite320_mobilenet_v3_large`. Detectors are timed end to
end on a batch of images (resize, normalise, network, box decoding, NMS), with random weights and the
score threshold at `DETECTOR_SCORE_THRESH`: random weights would otherwise send thousands of boxes to
NMS, a cost that depends on trained weights and would swamp the network's.

With several back ends (`hybridvit.export.backends`), every (model, resolution, back end) cell runs
in the same alternating rounds; each gets its latency relative to eager and its max error against eager.
"""
from __future__ import annotations

import difflib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import timm
import torch

from ..errors import UnknownModelError
from ..models import list_models
from ..tasks.detection import set_score_threshold
from .flops import MacCount, count_macs, count_macs_at, count_params
from .measure import peak_memory_bytes, time_side_by_side

# timm's nearest models to ours: MobileViT v1/v2, MobileNetV3, GhostNet, DeiT, Swin, EfficientNet.
PEERS: tuple[str, ...] = (
    "mobilevit_xxs",
    "mobilevit_xs",
    "mobilevit_s",
    "mobilevitv2_100",
    "mobilenetv3_large_100",
    "ghostnet_100",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "efficientnet_b0",
)

# torchvision detectors to compare ours with: name -> builder name in torchvision.models.detection.
DETECTION_PEERS: tuple[str, ...] = ("ssdlite320_mobilenet_v3_large",)
DETECTOR_SCORE_THRESH = 0.5

COLUMNS: tuple[str, ...] = (
    "model", "source", "res", "batch", "params_m", "gmacs", "gmacs_no_attn",
    "latency_ms", "latency_p90_ms", "throughput_img_s", "peak_mem_mb", "device", "threads", "note",
    "backend", "precision", "vs_eager", "max_err", "tokens",
)
TORCH_BACKENDS = ("eager", "compile")  # the ones whose peak memory the torch profiler sees


@dataclass
class BenchRow:
    """One model at one resolution and batch size. GMACs are per image; memory in MiB."""

    model: str
    source: str  # "hybridvit" or "timm"
    res: int | None  # None for a token mixer alone (bench/mixers.py), which has `tokens` instead
    batch: int
    params_m: float
    gmacs: float | None = None
    gmacs_no_attn: float | None = None
    latency_ms: float | None = None  # median over rounds
    latency_p90_ms: float | None = None
    throughput_img_s: float | None = None
    peak_mem_mb: float | None = None
    device: str = "cpu"
    threads: int = 1
    note: str = ""  # why a row has no measurements (e.g. a fixed-input-size model)
    backend: str = "eager"
    precision: str = "f32"  # what the back end reports it ran
    vs_eager: float | None = None  # latency / eager latency of the same model, resolution and batch
    max_err: float | None = None  # max |out - eager| / max(1, |eager|), BOAT's cluster cuts replayed
    tokens: int | None = None  # token count of a mixer row

    @property
    def label(self) -> str:
        return self.model if self.backend == "eager" else f"{self.model} [{self.backend}]"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchConfig:
    resolutions: Sequence[int] = (224, 256)
    batches: Sequence[int] = (1,)
    warmup: int = 3
    rounds: int = 10
    device: str = "cpu"
    threads: int | None = None  # None: keep torch's current setting
    memory: bool = True
    head: str | None = None  # a detection head: time detectors with the models as backbones
    backends: Sequence[str] = ("eager",)
    workdir: str | None = None  # where ONNX / OpenVINO graphs are written (default: a temporary folder)


def resolve_models(
    names: Sequence[str], all_models: bool = False, peers: bool = False, head: str | None = None
) -> list[str]:
    """Names in order, without duplicates; raise UnknownModelError for a name neither we nor timm know."""
    peer_names = DETECTION_PEERS if head else PEERS
    wanted = list(names) + (list_models() if all_models else []) + (list(peer_names) if peers else [])
    for name in wanted:
        check_bench_name(name, head)
    return list(dict.fromkeys(wanted))


def check_bench_name(name: str, head: str | None = None) -> None:
    model, at, mixer = name.partition("@")
    if at:  # MODEL@MIXER: a model with another token mixer (`attn_layer`, layers/mixers.py)
        from ..layers.mixers import check_mixer

        if head:
            raise UnknownModelError(f"'{name}': MODEL@MIXER names are for classification benches, not detectors")
        check_mixer(mixer, "bench")
        return check_bench_name(model, head)
    if name in list_models() or (head and name in DETECTION_PEERS) or (not head and timm.is_model(name)):
        return
    seg_head, sep, backbone = name.partition(":")
    if sep and head is None:  # HEAD:BACKBONE, a segmenter (hybridvit.tasks.segmenter_from_spec)
        from ..tasks import SEGMENTATION_HEADS

        if seg_head not in SEGMENTATION_HEADS:
            raise UnknownModelError(f"unknown segmentation head '{seg_head}' in '{name}'; choose one of "
                                    f"{', '.join(SEGMENTATION_HEADS)}")
        return check_bench_name(backbone)
    close = difflib.get_close_matches(name, list_models() + timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `hybridvit models` or see timm.list_models()"
    raise UnknownModelError(f"unknown model '{name}' (neither a hybridvit nor a timm model){hint}")


class DetectorOnBatch(torch.nn.Module):
    """A torchvision-style detector fed a batch tensor as the list of images it takes, for timing."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector
        set_score_threshold(detector, DETECTOR_SCORE_THRESH)

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.detector(list(x))


def _create(name: str, head: str | None = None) -> torch.nn.Module:
    # Random weights: speed and memory do not depend on them, and peers need no download.
    model, at, mixer = name.partition("@")
    if at and head is None:
        return timm.create_model(model, pretrained=False, attn_layer=mixer).eval()
    if head is None:
        from ..tasks import segmenter_from_spec

        segmenter = segmenter_from_spec(name)
        return (segmenter if segmenter is not None else timm.create_model(name, pretrained=False)).eval()
    if name in DETECTION_PEERS:
        import torchvision.models.detection as tv_detection

        return DetectorOnBatch(getattr(tv_detection, name)(weights=None, weights_backbone=None)).eval()
    from ..tasks import create_detector

    return DetectorOnBatch(create_detector(head, name, num_classes=80)).eval()


def _macs_or_note(model: torch.nn.Module, res: int) -> MacCount | str:
    """MACs at res x res, or why the model rejects that size (fixed-size models such as DeiT, Swin)."""
    try:
        if isinstance(model, DetectorOnBatch):  # post-processing cannot run on `meta` tensors
            return count_macs(model, torch.rand(1, 3, res, res))
        return count_macs_at(model, res)
    except Exception as err:  # any model may reject a size in its own way
        fixed = getattr(model, "pretrained_cfg", {}).get("fixed_input_size") and model.pretrained_cfg["input_size"][-1]
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"skipped: fixed input size {fixed}" if fixed else f"skipped: {first_line[:80]}"


def run_bench(names: Sequence[str], cfg: BenchConfig, log=print) -> list[BenchRow]:
    """Measure every model at every (resolution, batch) on every back end; models that reject a size,
    or back ends that fail, get a note row."""
    from ..export.backends import BackendError, check_backend

    for backend in cfg.backends:
        check_backend(backend)
    if cfg.head and set(cfg.backends) != {"eager"}:
        raise BackendError("detectors (--head) are timed on the eager back end only")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    threads = torch.get_num_threads()
    ours = set(list_models())
    models = {name: _create(name, cfg.head) for name in names}
    params = {name: count_params(m) / 1e6 for name, m in models.items()}
    rows: list[BenchRow] = []
    macs: dict[tuple[str, int], MacCount] = {}
    for res in cfg.resolutions:
        for name, model in models.items():
            counted = _macs_or_note(model, res)
            if isinstance(counted, MacCount):
                macs[name, res] = counted
                continue
            for batch in cfg.batches:
                rows.append(BenchRow(name, _source(name, ours), res, batch, params[name], device=device.type,
                                     threads=threads, note=counted))
    for model in models.values():
        model.to(device)
    runtimes = _runtimes(models, list(macs), cfg, log)
    for (name, res, backend), runtime in list(runtimes.items()):
        if isinstance(runtime, str):
            del runtimes[name, res, backend]
            rows += [BenchRow(name, _source(name, ours), res, batch, params[name], device=device.type, threads=threads,
                              note=runtime, backend=backend, precision="-") for batch in cfg.batches]
    for batch in cfg.batches:
        # Every cell in the same rounds: load changes hit all models, resolutions and back ends alike.
        inputs = {res: torch.randn(batch, 3, res, res, device=device) for res in cfg.resolutions}
        cells = list(runtimes)
        log(f"batch {batch}: timing {len(cells)} (model, resolution, back end) cells side by side ...")
        timings = time_side_by_side([(runtimes[cell], inputs[cell[1]]) for cell in cells], cfg.warmup, cfg.rounds)
        eager_ms = {(n, r): t.median_ms for (n, r, b), t in zip(cells, timings) if b == "eager"}
        for (name, res, backend), timing in zip(cells, timings):
            runtime, x = runtimes[name, res, backend], inputs[res]
            mem = peak_memory_bytes(runtime, x) / 2**20 if cfg.memory and backend in TORCH_BACKENDS else None
            err = note = None
            if backend != "eager":
                from ..export.backends import max_error

                err, free = max_error(models[name], runtime, [x])
                note = f"error {free:.2g} without replaying the cluster cuts" if free > max(err, 1e-4) else None
            rows.append(
                BenchRow(
                    name, _source(name, ours), res, batch, params[name],
                    gmacs=macs[name, res].total / 1e9, gmacs_no_attn=macs[name, res].without_attention / 1e9,
                    latency_ms=timing.median_ms, latency_p90_ms=timing.p90_ms,
                    throughput_img_s=batch * 1e3 / timing.median_ms, peak_mem_mb=mem,
                    device=device.type, threads=threads, note=note or "", backend=backend, precision=runtime.precision,
                    vs_eager=timing.median_ms / eager_ms[name, res] if (name, res) in eager_ms else None, max_err=err,
                )
            )
    order = {n: i for i, n in enumerate(names)}
    backend_order = {b: i for i, b in enumerate(cfg.backends)}
    rows.sort(key=lambda r: (r.res, r.batch, order[r.model], backend_order[r.backend]))
    if cfg.head:  # name our detectors by head and backbone
        for row in rows:
            row.model = row.model if row.source == "torchvision" else f"{cfg.head}-{row.model}"
    return rows


def _runtimes(models: dict, cells: list[tuple[str, int]], cfg: BenchConfig, log) -> dict:
    """(model, res, back end) -> Runtime, or a note saying why that back end is missing. ONNX-based back
    ends share one verified ONNX export per (model, res); INT8 ones calibrate on random images."""
    from ..export.backends import BackendError, eager_runtime, prepare
    from ..export.quantize import random_calibration

    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="hybridvit_bench_"))
    runtimes: dict = {}
    for name, res in cells:
        cell_dir = workdir / f"{name}_{res}"
        for backend in cfg.backends:
            if backend == "eager":
                runtimes[name, res, backend] = eager_runtime(models[name])
                continue
            if cfg.device != "cpu" and backend != "compile":
                runtimes[name, res, backend] = f"skipped: {backend} runs on the CPU only"
                continue
            log(f"preparing {name} at {res} on {backend} ...")
            onnx_path = cell_dir / "model.onnx"
            try:
                runtimes[name, res, backend] = prepare(
                    backend, models[name], res, workdir=cell_dir, onnx_path=onnx_path if onnx_path.is_file() else None,
                    calibration=random_calibration(res) if backend.endswith("int8") else None,
                )
            except BackendError as err:
                runtimes[name, res, backend] = f"skipped: {err}"
            except Exception as err:  # an export that fails for one model must not stop the others
                first_line = str(err).strip().splitlines()[0][:100] if str(err).strip() else ""
                runtimes[name, res, backend] = f"failed: {type(err).__name__}: {first_line}"
    return runtimes


def _source(name: str, ours: set[str]) -> str:
    return "hybridvit" if name.rpartition(":")[2].partition("@")[0] in ours else "torchvision" if name in DETECTION_PEERS else "timm"
