"""``dasslab-reproduce table=TABLE``: exactly the runs a paper table needs, each stage once.

The library behind it: :mod:`dasslab.workflow.reproduce`. Settings are Hydra-style ``key=value`` like every
command's; the older spelling ``dasslab-reproduce table1 --dry-run --seeds 3 --launcher local`` still works.
"""

from __future__ import annotations

import os
import shutil
import sys

from dasslab.commands.app import EXIT_USER_ERROR, one_line, parse_settings
from dasslab.workflow.reproduce import TABLES, compose_experiment, plan_table, print_plan, run_local, submit_slurm

USAGE = ("usage: dasslab-reproduce table=TABLE [seeds=S] [launcher=auto|slurm|local] [dry_run=true] "
         "[key=value ...]")
HELP = f"""{USAGE}

Every run a paper table needs, each stage once (shared source models, one DDPM), in dependency order. Each
experiment writes its results to outputs/reproduce/<table>/<experiment>/; finished jobs are reused, so running
the same command again resumes. Then: dasslab-tables runs=outputs/reproduce/<table> out=tables/.

options:
  table=TABLE            {', '.join(sorted(TABLES))}
  seeds=S                repeat the adaptation runs with seeds 0..S-1 (default: the configs' seed)
  launcher=NAME          auto (default): slurm where sbatch is on PATH, else local; local: run here, one
                         experiment after the other; slurm: submit every job as a Slurm job and return
  dry_run=true           print the plan and check the data (which datasets are missing, where they are
                         expected); run nothing
  key=value              any other setting goes to every run, e.g. dataset.source.root=/data/gta5
                         dataset.target.root=/data/cityscapes resume=auto

The environment's LAUNCHER, SEEDS and DRY_RUN give the defaults (make reproduce-tableN LAUNCHER=… SEEDS=…
DRY_RUN=1 ARGS='…'). Errors are one line. Reference: docs/reference.md#reproducing-the-paper."""

ALIASES = {"--dry-run": ("dry_run", False), "--seeds": ("seeds", True), "--launcher": ("launcher", True),
           "--table": ("table", True)}


def data_check(table: str, overrides: list[str]) -> list[str]:
    """The data check of ``stage=check`` (``data.prescan``, default headers) on every dataset of ``table``; one line
    per dataset: OK with its counts, or what is missing and where it is expected."""
    from dasslab.data.prescan import check_data

    lines, seen = [], set()
    for experiment in TABLES[table]:
        cfg = compose_experiment(experiment, overrides)
        name = str(cfg.dataset.name)
        if name in seen:
            continue
        seen.add(name)
        mode = str((cfg.get("data") or {}).get("prescan") or "headers")
        report, problems = check_data(cfg, "headers" if mode in ("off", "full") else mode)
        if report is not None:
            lines.append(f"  {name}: OK ({report.summary()})")
        lines += [f"  {name}: MISSING {p}" for p in problems]
    return lines


def main(argv: list[str] | None = None) -> int:
    from dasslab.errors import ConfigError, DasslabError

    argv = sys.argv[1:] if argv is None else argv
    env_dry = os.environ.get("DRY_RUN", "") not in ("", "0")
    defaults = {"table": None, "seeds": int(os.environ.get("SEEDS", 0) or 0) or None,
                "launcher": os.environ.get("LAUNCHER") or "auto", "dry_run": env_dry}
    try:
        args, overrides = parse_settings(argv, defaults, HELP, bare="table", rest=True, aliases=ALIASES)
        table, seeds, launcher = args["table"], args["seeds"], str(args["launcher"])
        if table is None:
            raise ConfigError(f"table: a value is required (table=TABLE: {', '.join(sorted(TABLES))})")
        if table not in TABLES:
            raise ConfigError(f"table={table}: unknown table; expected one of {', '.join(sorted(TABLES))}")
        if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)):
            raise ConfigError(f"seeds={seeds}: expected a whole number of seeds")
        if launcher not in ("auto", "local", "slurm"):
            raise ConfigError(f"launcher={launcher}: expected auto, local or slurm")
        dry_run = args["dry_run"] in (True, 1) or str(args["dry_run"]).lower() in ("true", "1", "yes")
        chosen = ("slurm" if shutil.which("sbatch") else "local") if launcher == "auto" else launcher
        items = plan_table(table, seeds, overrides)
        print_plan(items)
        print(f"launcher: {chosen}" + (" (auto)" if launcher == "auto" else ""))
        if dry_run:
            lines = data_check(table, overrides)
            missing = sum("MISSING" in line for line in lines)
            print("data check:\n" + "\n".join(lines))
            if missing:
                print(f"{missing} problem(s) with the data (relative paths are from {os.getcwd()}): put the "
                      f"datasets where the lines say (data/, or DASSLAB_DATA), or give their roots, e.g. "
                      f"dataset.source.root=DIR dataset.target.root=DIR")
            return 0
        if chosen == "slurm":
            if shutil.which("sbatch") is None:
                raise ConfigError("launcher=slurm submits to Slurm but sbatch is not on PATH; use launcher=local "
                                  "to run here")
            submit_slurm(table, seeds, overrides)
            return 0
        return run_local(table, seeds, overrides)
    except DasslabError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
