"""Re-record the golden outputs of tests/test_golden.py (its RUNS are the only definition of the runs).

    python tests/golden/record.py              # every run
    python tests/golden/record.py -k train_LA  # some runs (pytest -k expression)
    python tests/golden/record.py --new-legacy-checkpoint   # also replace legacy_resnet20_ckpt.pth.tar

Recording runs pytest on tests/test_golden.py with GOLDEN_RECORD=1: every run is executed twice in one process
(two folders), a run whose two executions differ is not recorded, and the others are written to
tests/golden/<run>.json. Then the goldens are checked again in a fresh process (plain pytest), which catches
differences across processes. The legacy checkpoint, written by the pre-redesign code, is kept unless
--new-legacy-checkpoint is given.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST = "tests/test_golden.py"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-k", default=None, help="pytest -k expression selecting runs (default: all)")
    p.add_argument("--new-legacy-checkpoint", action="store_true",
                   help="overwrite tests/golden/legacy_resnet20_ckpt.pth.tar and its .meta.json")
    p.add_argument("--no-verify", action="store_true", help="skip the check in a fresh process")
    args = p.parse_args()
    select = ["-k", args.k] if args.k else []
    env = dict(os.environ, GOLDEN_RECORD="1")
    if args.new_legacy_checkpoint:
        env["GOLDEN_RECORD_LEGACY"] = "1"
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST, *select]
    code = subprocess.call(base, cwd=REPO, env=env)
    if code or args.no_verify:
        return code
    print("== recorded; checking the goldens in a fresh process", flush=True)
    return subprocess.call(base, cwd=REPO, env={k: v for k, v in os.environ.items() if not k.startswith("GOLDEN_")})


if __name__ == "__main__":
    sys.exit(main())
