"""`make bench`: run every benchmark; each writes one JSON file into benchmarks/results/.

    python benchmarks/run_all.py            # full (tens of minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick    # small sizes only (about two minutes)
    python benchmarks/run_all.py --only data segmenter
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["data", "segmenter", "diffusion", "guidance"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=BENCHES, default=BENCHES)
    args = ap.parse_args()
    failed = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py")] + (["--quick"] if args.quick else [])
        t0 = time.time()
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        rc = subprocess.call(cmd)
        print(f"== {name}: exit {rc} after {time.time() - t0:.0f} s -> benchmarks/results/{name}.json", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
