"""``dasslab-tables runs=DIR[,DIR…]|GLOB out=DIR``: run directories -> the paper's result tables.

The library behind it: :mod:`dasslab.workflow.tables`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dasslab.commands.app import one_line, parse_settings
from dasslab.errors import ConfigError, DasslabError
from dasslab.workflow.tables import PAPER_FILE, find_runs, write_tables

# --------------------------------------------------------------------------- command line
USAGE = "usage: dasslab-tables runs=DIR[,DIR…] [runs=GLOB …] out=DIR [paper=FILE] [ignore=KEY,…]"
HELP = f"""{USAGE}

Collect run folders into the paper's tables (Markdown + CSV, one per table and dataset; out/tables.md holds
all), our numbers beside the paper's. Runs that differ only in seed share a row (mean ± std).

options:
  runs=DIR|GLOB          a run folder, a multirun sweep folder (experiments included), a pipeline run, the
                         pipeline cache (outputs/cache), or a folder holding any of them; repeat it or give a
                         comma list (runs=A,B or runs=[A,B]); a run reached twice counts once; a bare DIR too
  out=DIR                where the tables go (required)
  paper=FILE             the paper's numbers (default: dasslab/workflow/paper_results.yaml)
  ignore=KEY,…           settings that do not tell rows apart (added to the built-in list)

Settings are Hydra-style key=value, as for every dasslab command. Errors are one line. Reference:
docs/reference.md#result-tables."""


def parse_args(argv: Sequence[str]) -> dict:
    """``key=value`` arguments (``runs`` may repeat, hold a comma list or ``[a,b]``); bare words are runs."""
    args, _ = parse_settings(argv, {"runs": [], "out": None, "paper": str(PAPER_FILE), "ignore": []}, HELP,
                             bare="runs")
    args["runs"] = [str(r).strip() for r in args["runs"] if str(r).strip()]
    args["ignore"] = [str(k).strip() for k in args["ignore"] if str(k).strip()]
    if not args["runs"]:
        raise ConfigError("runs: a value is required (runs=DIR, a comma list or a glob)")
    if not args["out"]:
        raise ConfigError("out: a value is required (out=DIR, where the tables go)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        runs = find_runs(args["runs"])
        tables = write_tables(runs, args["out"], args["paper"], args["ignore"])
    except DasslabError as e:
        sys.stderr.write(f"error: {one_line(str(e))}\n")
        raise SystemExit(2) from None
    for md in tables.values():
        print(md)
    n_bad = sum(r.status != "ok" for r in runs)
    print(f"{len(runs)} runs ({n_bad} failed or missing) -> {len(tables)} tables in {args['out']}")


if __name__ == "__main__":
    main()
