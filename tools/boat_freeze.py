"""Write tests/data/boat_frozen_outputs.pt: BOAT's frozen-output cases (tests/boat_frozen.py) run by the
code of an older commit, the one before any-size support (f92a001).

    python tools/boat_freeze.py [--commit f92a001]

The commit's tree is unpacked with `git archive` into a temporary folder and imported from there in a
subprocess, with tests/ of this checkout on the path for `boat_frozen`.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import sys, torch
from boat_frozen import FROZEN_CASES, frozen_case
outputs = {}
for case in FROZEN_CASES:
    model, x = frozen_case(case)
    with torch.no_grad():
        outputs[case] = model.forward_features(x)
torch.save(outputs, sys.argv[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="f92a001")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.commit, "hybridvit"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([old, str(ROOT / "tests")]))
        out = ROOT / "tests" / "data" / "boat_frozen_outputs.pt"
        subprocess.run([sys.executable, "-c", RUN, str(out)], check=True, env=env, cwd=old)
    print(f"wrote {out} from commit {args.commit}")


if __name__ == "__main__":
    main()
