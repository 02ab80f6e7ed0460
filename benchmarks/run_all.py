"""`make bench [DEVICE=cuda]`: run every benchmark on one device; each writes one JSON file into
benchmarks/results/, then benchmarks/projection.py turns the measured step costs into PTL wall times.

    python benchmarks/run_all.py                      # CPU, full (tens of minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick              # small sizes only (a few minutes)
    python benchmarks/run_all.py --device cuda        # every benchmark on the GPU, paper sizes
    python benchmarks/run_all.py --only data segmenter
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["data", "segmenter", "diffusion", "guidance", "ptl", "projection"]


def command(name: str, device: str, quick: bool) -> list[str]:
    if name == "projection":
        return [sys.executable, str(HERE / "projection.py")]
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--device", device]
    if quick:
        cmd.append("--quick")
    if name == "segmenter" and device.startswith("cuda"):
        cmd += ["--batches", "2", "8", "32"]
    return cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda: where every benchmark runs")
    ap.add_argument("--only", nargs="*", choices=BENCHES, default=BENCHES)
    args = ap.parse_args()
    failed = []
    for name in args.only:
        cmd = command(name, args.device, args.quick)
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
