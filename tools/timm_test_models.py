"""Run timm's own ``tests/test_models.py`` over hybridvit's registered models (issue 19).

timm's pip wheel ships no tests, so the file is taken from the sdist of the installed timm version
(``pip download timm==X --no-binary :all:``, which has ``tests/``). Two changes, both outside
the file's test bodies: hybridvit is imported through the file's own ``TORCH_BACKEND`` hook (it
imports that module before listing models), and our model modules are added to its
``FEAT_INTER_FILTERS`` (the modules it runs the ``forward_intermediates`` tests on; timm's own
``mobilevit`` module comes in with ours, for comparison). A small pytest plugin keeps only the
named models and gives each case a time limit (timm uses pytest-timeout, not installed here).

One pytest process per test function, one after another (``nice -n 10``, one thread):

    python tools/timm_test_models.py                       # every hybridvit model + timm's closest
    python tools/timm_test_models.py --tests test_model_forward --models hv_mobilevit_xxs
    python tools/timm_test_models.py --summary-only        # re-print the table from the logs

Logs and a per-function summary go to ``--out`` (default ``/tmp/hv_timm_test_models``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# timm's closest models, run alongside ours for comparison (issue 19).
TIMM_REFERENCE = ["mobilevit_xxs", "mobilevit_s", "ghostnet_100", "deit_tiny_patch16_224",
                  "swin_tiny_patch4_window7_224"]
# Our model family -> timm's closest model of the same kind.
CLOSEST = {"hv_mobilevit": "mobilevit_xxs", "xformer": "mobilevit_xxs", "mocovit": "ghostnet_100",
           "hv_ghostnet": "ghostnet_100", "ceit": "deit_tiny_patch16_224", "boat": "swin_tiny_patch4_window7_224"}
OUR_MODULES = ["mobilevit", "xformer", "boat", "ceit", "mocovit"]
# Every test function of the file that is parametrised over list_models() and needs no download.
TESTS = [
    "test_model_forward", "test_model_backward", "test_model_forward_torchscript", "test_model_forward_features",
    "test_model_forward_intermediates_features", "test_model_forward_intermediates", "test_prune_intermediate_layers_contract", "test_model_forward_fx",
    "test_model_backward_fx", "test_model_forward_fx_torchscript", "test_model_default_cfgs",
    "test_model_default_cfgs_non_std",
]

PLUGIN = '''
import os, signal
import pytest

_KEEP = set(os.environ["HV_MODELS"].split(","))
_LIMIT = int(os.environ.get("HV_CASE_TIMEOUT", "600"))


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        name = spec.params.get("model_name", "") if spec is not None else ""
        (keep if name.split(".")[0] in _KEEP else drop).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


def _expired(signum, frame):
    raise TimeoutError(f"case ran past {_LIMIT} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    signal.signal(signal.SIGALRM, _expired)
    signal.alarm(_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
'''

# Case ids are [batch_size-model_name] (or [model_name]); timm's names may carry a pretrained tag.
_ID = r"\[(?:\d+-)?([\w.]+?)(?:-\d+)?\]"
RESULT = re.compile(r"^test_models\.py::(\w+)" + _ID + r" (PASSED|FAILED|SKIPPED|ERROR)")
REASON = re.compile(r"^(FAILED|ERROR) test_models\.py::(\w+)" + _ID + r"(?: - )?(.*)$")


def prepare(scratch: Path) -> Path:
    """Extract test_models.py of the installed timm's sdist into scratch and patch its module list."""
    import timm

    tests = scratch / f"timm-{timm.__version__}" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (tests / "hv_select.py").write_text(PLUGIN)
    if (tests / "test_models.py").exists():
        return tests / "test_models.py"
    sdist = scratch / f"timm-{timm.__version__}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", f"timm=={timm.__version__}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(scratch)], check=True)
    with tarfile.open(sdist) as tar:
        member = f"timm-{timm.__version__}/tests/test_models.py"
        tar.extract(member, scratch, filter="data")
    text = (tests / "test_models.py").read_text()
    anchor = "FEAT_INTER_FILTERS = ["
    assert anchor in text, "timm's test_models.py has no FEAT_INTER_FILTERS list"
    text = text.replace(anchor, anchor + " " + ", ".join(repr(m) for m in OUR_MODULES) + ",", 1)
    (tests / "test_models.py").write_text(text)
    return tests / "test_models.py"


def run(test_file: Path, tests: list[str], models: list[str], out: Path, case_timeout: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCH_BACKEND="hybridvit", OMP_NUM_THREADS="1", HV_MODELS=",".join(models),
               HV_CASE_TIMEOUT=str(case_timeout), COLUMNS="400",
               PYTHONPATH=os.pathsep.join([str(REPO), str(test_file.parent), os.environ.get("PYTHONPATH", "")]))
    for name in tests:
        log = out / f"{name}.log"
        cmd = ["nice", "-n", "10", sys.executable, "-m", "pytest", f"{test_file.name}::{name}", "-p", "hv_select",
               "-p", "no:cacheprovider", "-vv", "--tb=line", "-rfEs", "-W", "ignore"]
        print("+", " ".join(cmd), flush=True)
        with log.open("w") as fh:
            subprocess.run(cmd, cwd=test_file.parent, env=env, stdout=fh, stderr=subprocess.STDOUT)
        summarize([name], out)


def summarize(tests: list[str], out: Path) -> None:
    for name in tests:
        log = out / f"{name}.log"
        if not log.exists():
            continue
        outcomes: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for line in log.read_text().splitlines():
            if m := RESULT.match(line):
                model = m.group(2).split(".")[0]  # timm's cfg tests list tagged names
                if outcomes.get(model, "PASSED") == "PASSED":
                    outcomes[model] = m.group(3)
            elif m := REASON.match(line):
                reasons.setdefault(m.group(3).split(".")[0], m.group(4)[:300])
        ours = {k: v for k, v in outcomes.items() if k not in TIMM_REFERENCE}
        ref = {k: v for k, v in outcomes.items() if k in TIMM_REFERENCE}
        fmt = lambda d: ", ".join(f"{k.lower()} {v}" for k, v in sorted(Counter(d.values()).items())) or "none"
        print(f"{name}: hybridvit {fmt(ours)} | timm {fmt(ref)}")
        for model, outcome in sorted(outcomes.items()):
            if outcome != "PASSED":
                print(f"    {model}: {outcome} {reasons.get(model, '')}")
        by_family = defaultdict(list)
        for model, outcome in ours.items():
            family = next((f for f in CLOSEST if model.startswith(f)), None)
            if family and outcome != "PASSED" and ref.get(CLOSEST[family]) == "PASSED":
                by_family[CLOSEST[family]].append(model)
        for closest, models in by_family.items():
            print(f"    passes for {closest}, not for: {', '.join(sorted(models))}")


def main() -> None:
    import hybridvit

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", nargs="+", default=TESTS)
    parser.add_argument("--models", nargs="+", default=hybridvit.list_models() + TIMM_REFERENCE)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hv_timm_test_models"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/hv_timm_tests"))
    parser.add_argument("--case-timeout", type=int, default=600, help="seconds per test case")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if args.summary_only:
        summarize(args.tests, args.out)
        return
    run(prepare(args.scratch), args.tests, args.models, args.out, args.case_timeout)


if __name__ == "__main__":
    main()
