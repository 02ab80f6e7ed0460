"""``dasslab-tables runs=DIR[,DIR…]|GLOB out=DIR``: run directories -> the paper's result tables.

The library behind it: :mod:`dasslab.workflow.tables`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dasslab.errors import ConfigError, DasslabError
from dasslab.workflow.tables import PAPER_FILE, find_runs, write_tables

# --------------------------------------------------------------------------- command line
USAGE = ("usage: dasslab-tables runs=DIR[,DIR…] [runs=GLOB …] out=DIR [paper=FILE] [ignore=KEY,…]\n"
         "  DIR: a run folder, a multirun sweep folder (experiments included), a pipeline run, the pipeline\n"
         "  cache (outputs/cache), or a folder holding any of them; a run reached twice counts once.")


def parse_args(argv: Sequence[str]) -> dict:
    """``key=value`` arguments (``runs`` may repeat, hold a comma list or ``[a,b]``); bare words are runs."""
    args: dict = {"runs": [], "out": None, "paper": str(PAPER_FILE), "ignore": []}
    for a in argv:
        if a in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        key, eq, value = a.partition("=")
        if not eq:
            key, value = "runs", a
        if key not in args:
            raise ConfigError(f"{key}={value}: unknown setting; expected runs=, out=, paper= or ignore=")
        if key in ("runs", "ignore"):
            args[key] += [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        else:
            args[key] = value
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
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    for md in tables.values():
        print(md)
    n_bad = sum(r.status != "ok" for r in runs)
    print(f"{len(runs)} runs ({n_bad} failed or missing) -> {len(tables)} tables in {args['out']}")


if __name__ == "__main__":
    main()
