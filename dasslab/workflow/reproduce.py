"""``dasslab-reproduce table=TABLE``: exactly the runs a paper table needs, each stage once, in dependency order.

Each table is a list of experiment configs (``conf/experiment/``, one file per row of the
paper). Every experiment is a pipeline (``stage=pipeline``) whose jobs are planned
(:func:`dasslab.workflow.plan.plan`); jobs with the same run folder — the same resolved
settings — are the same job, so the Cityscapes diffusion model shared by GTA5 and
SYNTHIA, or a source model shared by several rows, is planned once.

``launcher=local`` runs the experiments here, one after the other (each reuses the jobs
the earlier ones finished). ``launcher=slurm`` submits every job of the table once as a
Slurm job of its own, ``afterok`` on the Slurm jobs it needs, and one results job per
experiment, then returns (:mod:`dasslab.workflow.slurm`; cluster settings as for ``hydra/launcher=slurm``).
``launcher=auto`` (the default): slurm where ``sbatch`` is on PATH, else local. Each
experiment writes its results to ``<paths.log_dir>/reproduce/<table>/<experiment>``; then
``dasslab-tables runs=<that folder> out=…`` makes the table. Finished jobs are reused, so a
stopped reproduction is resumed by running the same command again.

``dry_run=true`` prints the plan (each job, its folder, what it waits for), checks the data and runs nothing.
``seeds=3`` repeats the adaptation runs with seeds 0, 1, 2 (the paper averages five);
nothing else is repeated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

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


def compose_experiment(experiment: str, overrides: list[str], hydra: bool = False):
    """The config of ``experiment`` with ``overrides`` (with its ``hydra`` node when asked: launcher settings)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    setup_globals()       # Hydra's resolvers (now, …), as in a dasslab-train run
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", [f"experiment={experiment}", *overrides], return_hydra_config=hydra)


def seed_overrides(seeds: int | None) -> list[str]:
    """``pipeline.seeds=[0,…,S-1]`` for ``--seeds S`` (None: the configs' seed); S <= 0 is one line, not the default."""
    if seeds is None:
        return []
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        from dasslab.errors import ConfigError

        raise ConfigError(f"--seeds={seeds!r}: expected an integer >= 1 (the adaptation runs are repeated with seeds "
                          f"0..S-1), or no --seeds for the configs' seed")
    return [f"pipeline.seeds=[{','.join(str(s) for s in range(seeds))}]"]


def experiment_overrides(table: str, experiment: str, overrides: list[str]) -> list[str]:
    """Where an experiment of ``table`` writes its results: ``<log_dir>/reproduce/<table>/<experiment>``, with
    the cache where the config puts it (shared by every table and run)."""
    cfg = compose_experiment(experiment, overrides)
    out = Path(str(cfg.paths.log_dir)) / "reproduce" / table / experiment
    return [f"paths.output_dir={out}", f"paths.cache_dir={cfg.paths.cache_dir}"]


def plan_table(table: str, seeds: int | None, overrides: list[str]) -> list[Item]:
    """Every job of ``table`` once, with its wave (0 = waits for nothing)."""
    from dasslab.errors import ConfigError
    from dasslab.workflow.plan import plan

    if table not in TABLES:
        raise ConfigError(f"reproduce: unknown table {table!r}; expected one of {', '.join(TABLES)}")
    extra = list(overrides) + seed_overrides(seeds)       # checked before any experiment is composed
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


def print_plan(items: list[Item]) -> None:
    names = {it.run_dir: f"{it.experiment}:{it.row}" + ("" if it.seed is None else f"@seed{it.seed}") for it in items}
    by_stage: dict[str, int] = defaultdict(int)
    for it in items:
        by_stage[it.stage] += 1
        waits = ", ".join(names[d] for d in it.waits_for) or "nothing"
        print(f"wave {it.wave}  {names[it.run_dir]:<40} stage={it.stage:<10} {it.run_dir}\n"
              f"        waits for: {waits}")
    print("jobs per stage: " + ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items())) + f"; total {len(items)}")


def run_local(table: str, seeds: int | None, overrides: list[str]) -> int:
    """Each experiment of ``table`` here, one after the other (``dasslab-train experiment=…``)."""
    exe = os.path.join(os.path.dirname(sys.executable), "dasslab-train")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "dasslab.commands.train"]
    for experiment in TABLES[table]:
        args = [f"experiment={experiment}", *experiment_overrides(table, experiment, overrides), *overrides,
                *seed_overrides(seeds)]
        print("[reproduce] " + " ".join(["dasslab-train", *args]), flush=True)
        code = subprocess.call([*cmd, *args])
        if code:
            print(f"error: experiment {experiment} failed (exit status {code}); rerun the same command to resume "
                  f"(finished jobs are reused)", file=sys.stderr)
            return 1
    return 0


def submit_slurm(table: str, seeds: int | None, overrides: list[str], engine=None) -> dict[str, dict]:
    """Every job of ``table`` once as a Slurm job (afterok on what it needs) and one results job per experiment
    (:mod:`dasslab.workflow.slurm`); returns ``{experiment: what was submitted}``."""
    from omegaconf import open_dict

    from dasslab.checks.settings import validate_config
    from dasslab.workflow.plan import plan
    from dasslab.workflow.results import write_results
    from dasslab.workflow.slurm import SlurmEngine, launcher_params, submit_pipeline

    submitted = {}
    for experiment in TABLES[table]:
        cfg = compose_experiment(experiment, [*experiment_overrides(table, experiment, overrides), *overrides,
                                              *seed_overrides(seeds), "hydra/launcher=slurm"], hydra=True)
        if engine is None:
            engine = SlurmEngine(launcher_params(cfg.hydra.launcher))
        with open_dict(cfg):
            del cfg["hydra"]
        validate_config(cfg)             # every job's settings and files, here, before anything is queued
        planned, skipped = plan(cfg, list(cfg.pipeline.rows))
        print(f"[reproduce] {experiment}:", flush=True)
        submitted[experiment] = submit_pipeline(cfg, planned, skipped, engine.params, finish=write_results,
                                                reuse=bool(cfg.pipeline.reuse), engine=engine)
    return submitted
