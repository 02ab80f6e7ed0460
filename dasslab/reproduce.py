"""``dasslab-reproduce TABLE``: exactly the runs a paper table needs, each stage once, in dependency order.

Each table is a list of experiment configs (``conf/experiment/``, one file per row of the
paper). Every experiment is a pipeline (``stage=pipeline``) whose jobs are planned
(:func:`dasslab.pipeline.plan`); jobs with the same run folder — the same resolved
settings — are the same job, so the Cityscapes diffusion model shared by GTA5 and
SYNTHIA, or a source model shared by several rows, is planned once. Jobs are grouped
into waves (a job runs after everything it waits for) and each wave is launched as
Hydra multiruns of ``dasslab-train`` — locally one after the other (``--launcher local``)
or as SLURM jobs through hydra-submitit-launcher (``--launcher slurm``). Finished jobs
are reused, so a preempted reproduction is resumed by running the same command again.

``--dry-run`` prints the plan (each job, its overrides, its folder, what it waits for)
and runs nothing. ``--seeds 3`` repeats the adaptation runs with seeds 0, 1, 2 (the
paper averages five); nothing else is repeated.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field

from dasslab.config import CONF_DIR

BACKBONES = {"r101": "deeplabv2_r101", "vgg16": "fcn8s_vgg16", "mitb5": "daformer_mitb5"}
SOURCES = {"gta5": "gta5_cityscapes", "synthia": "synthia_cityscapes"}

TABLES: dict[str, list[str]] = {
    "table1": [f"table1_{b}_{s}" for s in SOURCES for b in BACKBONES],
    "table2": ["table2a_baseline", "table2b_wo_sgg", "table2c_wo_ptl", "table2d_wo_lcg", "table2e_wo_gsg",
               "table2f_full"],
    "table3": ["table3a_ada_only", "table3b_ada_src"],
    "table5": ["table5_alternate", "table5_lcg_then_gsg", "table5_gsg_then_lcg", "table5_randmix"],
    "table6": ["table6_aug_off", "table6_aug_on"],
}


@dataclass
class Item:
    """One job to launch: the experiment it belongs to, its pipeline row, its seed (adaptation rows)."""

    experiment: str
    row: str
    seed: int | None
    stage: str
    run_dir: str
    waits_for: list[str] = field(default_factory=list)   # run dirs
    wave: int = 0


def compose_experiment(experiment: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", [f"experiment={experiment}", *overrides])


def plan_table(table: str, seeds: int | None, overrides: list[str]) -> list[Item]:
    """Every job of ``table`` once, with its wave (0 = waits for nothing)."""
    from dasslab.errors import ConfigError
    from dasslab.pipeline import plan

    if table not in TABLES:
        raise ConfigError(f"reproduce: unknown table {table!r}; expected one of {', '.join(TABLES)}")
    extra = list(overrides) + ([f"pipeline.seeds=[{','.join(str(s) for s in range(seeds))}]"] if seeds else [])
    items: dict[str, Item] = {}
    for experiment in TABLES[table]:
        cfg = compose_experiment(experiment, extra)
        planned, skipped = plan(cfg, list(cfg.pipeline.rows))
        for row, why in skipped.items():
            print(f"# {experiment}: row {row} skipped ({why})")
        for label, job in planned.items():
            run_dir = str(job.out)
            if run_dir in items:
                continue
            row, _, seed = label.partition("@seed")
            items[run_dir] = Item(experiment, row, int(seed) if seed else None, job.stage, run_dir,
                                  [str(planned[n].out) for n in job.needs])
    for item in items.values():          # planned lists come in dependency order
        item.wave = max((items[d].wave + 1 for d in item.waits_for), default=0)
    return sorted(items.values(), key=lambda i: (i.wave, i.experiment, i.row, i.seed or 0))


def commands(items: list[Item], launcher: str, overrides: list[str]) -> list[list[list[str]]]:
    """Per wave, the ``dasslab-train -m`` commands that run its jobs (one per experiment and kind)."""
    waves: dict[int, dict[tuple, list[Item]]] = defaultdict(lambda: defaultdict(list))
    for it in items:
        waves[it.wave][(it.experiment, it.seed is not None)].append(it)
    out = []
    for w in sorted(waves):
        cmds = []
        for (experiment, seeded), group in sorted(waves[w].items()):
            rows = sorted({it.row for it in group})
            cmd = ["dasslab-train", "-m", f"experiment={experiment}", "stage=pipeline",
                   "pipeline.rows=" + ",".join(f"[{r}]" for r in rows)]
            if seeded:
                cmd.append("pipeline.seeds=" + ",".join(f"[{s}]" for s in sorted({it.seed for it in group})))
            if launcher != "local":
                cmd.append(f"hydra/launcher={launcher}")
            cmds.append(cmd + list(overrides))
        out.append(cmds)
    return out


def print_plan(items: list[Item]) -> None:
    names = {it.run_dir: f"{it.experiment}:{it.row}" + ("" if it.seed is None else f"@seed{it.seed}") for it in items}
    by_stage: dict[str, int] = defaultdict(int)
    for it in items:
        by_stage[it.stage] += 1
        waits = ", ".join(names[d] for d in it.waits_for) or "nothing"
        print(f"wave {it.wave}  {names[it.run_dir]:<40} stage={it.stage:<10} {it.run_dir}\n"
              f"        waits for: {waits}")
    print("jobs per stage: " + ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items())) + f"; total {len(items)}")


def main(argv: list[str] | None = None) -> int:
    from dasslab.errors import DasslabError

    ap = argparse.ArgumentParser(prog="dasslab-reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", choices=sorted(TABLES))
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 0) or 0) or None,
                    help="repeat the adaptation runs with seeds 0..S-1 (default: the configs' seed)")
    ap.add_argument("--launcher", default=os.environ.get("LAUNCHER", "local"),
                    help="local (one after the other) or a hydra/launcher option, e.g. slurm")
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "") not in ("", "0"),
                    help="print the plan and the commands, run nothing")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. dataset.source.root=…")
    args = ap.parse_args(argv)
    try:
        items = plan_table(args.table, args.seeds, args.overrides)
    except DasslabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_plan(items)
    waves = commands(items, args.launcher, args.overrides)
    for w, cmds in enumerate(waves):
        for cmd in cmds:
            print(f"[wave {w}] " + shlex.join(cmd))
    if args.dry_run:
        return 0
    if args.launcher != "local" and shutil.which("sbatch") is None:
        print(f"error: LAUNCHER={args.launcher} submits to SLURM but sbatch is not on PATH; "
              f"use LAUNCHER=local to run here", file=sys.stderr)
        return 2
    exe = os.path.join(os.path.dirname(sys.executable), "dasslab-train")
    for w, cmds in enumerate(waves):
        cmds = [[exe, *c[1:]] for c in cmds]
        if args.launcher == "local":     # one machine: one job at a time
            codes = [subprocess.call(c) for c in cmds]
        else:                            # the cluster runs each wave's jobs side by side
            codes = [p.wait() for p in [subprocess.Popen(c) for c in cmds]]
        if any(codes):
            print(f"error: wave {w}: {sum(1 for c in codes if c)} of {len(codes)} commands failed; "
                  f"rerun the same command to resume (finished jobs are reused)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
