"""``stage=pipeline``: run the jobs of a results table, reusing finished stage runs.

``pipeline.jobs`` names every job a table may need, ``pipeline.rows`` the ones it reports (the format:
:mod:`dasslab.workflow.plan`). The steps, each in its own module: the plan (:mod:`dasslab.workflow.plan`:
jobs, cache keys, order), running it here (:mod:`dasslab.workflow.execute`), the results
(:mod:`dasslab.workflow.results`: results.json, results.md, timings.json).

Who runs a job (:mod:`dasslab.workflow.jobrun`): the pipeline process plans, locks and writes the records; a job
that trains as several processes (DDP: ``trainer.devices`` > 1) runs in a child process that starts its
own ranks, so no rank ever waits on a lock. Under ``hydra/launcher=slurm`` every job becomes a Slurm job of
its own with ``afterok`` dependencies on the jobs it needs, plus one job that writes the results, and the
pipeline returns once they are submitted (:mod:`dasslab.workflow.slurm`).

W&B (``logger=wandb``): every job's run is in the experiment's group (``logger.wandb.group``: the
experiment, or ``<experiment>/<sweep>`` in a multirun) with the job's row as its job type; the results,
reused jobs' included, go to one summary run of the experiment (:mod:`dasslab.workflow.wandb_report`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from dasslab.workflow.execute import execute
from dasslab.workflow.jobrun import launched_world
from dasslab.workflow.plan import plan, plan_text
from dasslab.workflow.results import write_results


def run_pipeline(cfg: DictConfig) -> dict:
    """Run ``pipeline.rows`` (and the jobs they need); write ``results.json`` and ``results.md``.

    Under ``hydra/launcher=slurm`` the jobs are submitted as Slurm jobs instead (:mod:`dasslab.workflow.slurm`) and
    the results are written by the last of them. Ranks of a launch of several processes
    (:func:`dasslab.workflow.jobrun.launched_world`) all run the jobs; rank 0 alone writes the results."""
    if cfg.pipeline.get("pairs"):        # a suite: every pair's rows, one table with the pairs as columns
        from dasslab.workflow.suite import run_suite

        return run_suite(cfg)
    planned, skipped = plan(cfg, list(cfg.pipeline.rows))
    for row, why in skipped.items():
        print(f"[pipeline] {row}: skipped ({why})")
    if cfg.pipeline.get("dry_run"):
        print(plan_text(planned))
        return {"plan": {n: {"stage": j.stage, "run_dir": str(j.out), "needs": j.needs} for n, j in planned.items()}}
    from dasslab.workflow.slurm import hydra_slurm_params, submit_pipeline

    slurm = hydra_slurm_params()
    if slurm is not None:
        return submit_pipeline(cfg, planned, skipped, slurm, finish=write_results, reuse=bool(cfg.pipeline.reuse))
    world = launched_world()
    done = execute(planned, bool(cfg.pipeline.reuse), int(cfg.pipeline.get("parallel") or 1), world)
    if world is not None and world.rank > 0:
        return {}
    return write_results(cfg, planned, skipped, done)
