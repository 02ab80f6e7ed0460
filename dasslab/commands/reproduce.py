"""``dasslab-reproduce TABLE``: exactly the runs a paper table needs, each stage once.

The library behind it: :mod:`dasslab.workflow.reproduce`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from dasslab.workflow import reproduce as _library
from dasslab.workflow.reproduce import TABLES, plan_table, print_plan, run_local, submit_slurm


def main(argv: list[str] | None = None) -> int:
    from dasslab.errors import DasslabError

    ap = argparse.ArgumentParser(prog="dasslab-reproduce", description=_library.__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 0) or 0) or None,
                    help="repeat the adaptation runs with seeds 0..S-1 (default: the configs' seed)")
    ap.add_argument("--launcher", default=os.environ.get("LAUNCHER") or "auto", choices=["auto", "local", "slurm"],
                    help="local: run here, one experiment after the other; slurm: submit every job as a Slurm job "
                         "and return; auto (default): slurm where sbatch is on PATH, else local")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") not in ("", "0"),
                    help="print the plan, run nothing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. dataset.source.root=…")
    args = ap.parse_args(argv)
    launcher = args.launcher
    if launcher == "auto":
        launcher = "slurm" if shutil.which("sbatch") else "local"
    try:
        items = plan_table(args.table, args.seeds, args.overrides)
        print_plan(items)
        print(f"launcher: {launcher}" + (" (auto)" if args.launcher == "auto" else ""))
        if args.dry_run:
            return 0
        if launcher == "slurm":
            if shutil.which("sbatch") is None:
                print("error: --launcher slurm submits to Slurm but sbatch is not on PATH; use --launcher local to "
                      "run here", file=sys.stderr)
                return 2
            submit_slurm(args.table, args.seeds, args.overrides)
            return 0
        return run_local(args.table, args.seeds, args.overrides)
    except DasslabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
