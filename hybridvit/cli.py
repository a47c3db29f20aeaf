"""`hybridvit <verb>`: models, info (and the verbs other subpackages add).

Errors a user can fix (unknown model, bad file, bad input) print one line and exit with code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from .argtypes import positive_int
from .errors import HybridViTError

# Each module here defines `add_commands(subparsers)`; its parsers set `func` to a handler.
_VERB_MODULES: tuple[str, ...] = (
    "hybridvit.engine.commands",
    "hybridvit.bench.commands",
    "hybridvit.export.commands",
)


def _meta_model(name: str) -> torch.nn.Module:
    from . import create_model

    with torch.device("meta"):
        return create_model(name)


def cmd_models(args: argparse.Namespace) -> None:
    from .bench.flops import count_macs_at, count_params
    from .bench.report import format_table
    from .models import list_models, paper_entry

    rows = []
    for name in list_models(args.family):
        entry = paper_entry(name)
        model = _meta_model(name)
        gmacs = None if args.no_macs else count_macs_at(model, entry.input_size).total / 1e9
        rows.append(
            [name, entry.family, entry.input_size, count_params(model) / 1e6, gmacs, entry.params_m, entry.top1]
        )
    headers = ["model", "family", "res", "params (M)", "GMACs", "paper params (M)", "paper top-1"]
    print(format_table(headers, rows, markdown=args.markdown))


def cmd_info(args: argparse.Namespace) -> None:
    from .bench.flops import count_macs_at, count_params
    from .bench.report import format_table
    from .models import paper_entry

    entry = paper_entry(args.model)
    model = _meta_model(args.model).eval()
    res = args.res or entry.input_size
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, tuple(o.shape)))
        for name, module in _stage_modules(model)
    ]
    macs = count_macs_at(model, res)
    for hook in hooks:
        hook.remove()
    rows = [[name, "x".join(map(str, shapes.get(name, ()))), count_params(module) / 1e6] for name, module in _stage_modules(model)]
    print(f"{args.model}  ({entry.family}, {entry.source})")
    print(f"input {res}x{res}: {count_params(model):,} params, {macs.total / 1e9:.3f} GMACs "
          f"({macs.without_attention / 1e9:.3f} without attention matmuls)")
    print(format_table(["module", "output shape", "params (M)"], rows))


def _stage_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Top-level children, with `stages` (or `blocks`) expanded one level."""
    out = []
    for name, child in model.named_children():
        if name in ("stages", "blocks", "layers") and isinstance(child, torch.nn.Sequential):
            out.extend((f"{name}.{i}", c) for i, c in child.named_children())
        else:
            out.append((name, child))
    return out


class _Parser(argparse.ArgumentParser):
    """Usage mistakes (a bad flag value, a missing argument) as one line with exit code 2, like HybridViTError."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hybridvit", description="Lightweight hybrid CNN-ViT models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list models with params, MACs and the papers' numbers")
    p.add_argument("--family", help="only this family (mobilevit, xformer, boat, ceit, mocovit)")
    p.add_argument("--no-macs", action="store_true", help="skip MAC counting (faster)")
    p.add_argument("--markdown", action="store_true", help="print a GitHub markdown table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="per-stage shapes, params and MACs of one model")
    p.add_argument("model")
    p.add_argument("--res", type=positive_int, help="input resolution (default: the model's)")
    p.set_defaults(func=cmd_info)

    import importlib

    for module_name in _VERB_MODULES:
        importlib.import_module(module_name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except HybridViTError as err:
        print(f"hybridvit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
