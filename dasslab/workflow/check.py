"""Config-time checks of a ``stage=pipeline`` run (``stage.check`` of ``conf/stage/pipeline.yaml``, called by
:func:`dasslab.checks.settings.validate_config`): every job the run will start is checked before the first one runs.

Kept apart from :mod:`dasslab.workflow.pipeline` (which validates each job as it starts) and
:mod:`dasslab.checks.settings` (which names this check by string), so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from dasslab.checks.settings import validate_config

__all__ = ["validate_jobs"]


def validate_jobs(cfg) -> None:
    """Every job a ``stage=pipeline`` run will start, checked before the first one runs: its settings
    (:func:`validate_config` without files: upstream checkpoints do not exist yet), the files the user
    gave it (not those upstream jobs fill), and the record (``DONE.json``) of a finished job it will reuse.
    A suite (``pipeline.pairs``): every pair's jobs."""
    if cfg.pipeline.get("pairs"):
        from dasslab.workflow.suite import pair_config

        for pair in cfg.pipeline.pairs:
            validate_jobs(pair_config(cfg, str(pair)))
        return
    from dasslab.checks.files import check_run_files
    from dasslab.errors import DasslabError
    from dasslab.workflow.plan import check_job, job_config, job_upstreams, unmet_requirement

    jobs = cfg.pipeline.jobs
    order: list[str] = []
    upstreams: dict[str, dict] = {}

    def walk(name: str, chain: tuple = ()) -> None:
        if name in order:
            return
        check_job(jobs, name, chain)
        ups = job_upstreams(cfg, name)
        for up in ups.values():
            walk(up, chain + (name,))
        upstreams[name] = ups
        order.append(name)

    for row in cfg.pipeline.rows:
        if not unmet_requirement(cfg, row):
            walk(row)
    stages = set()
    for name in order:
        filled = set(upstreams[name])
        sub = job_config(cfg, name, {s: f"<checkpoint of job {u}>" for s, u in upstreams[name].items()})
        stages.add(str(sub.stage.name))
        try:
            validate_config(sub, check_files=False)
            check_run_files(sub, skip=filled)
        except DasslabError as e:
            raise type(e)(f"pipeline job {name}: {e}") from None
    cache = Path(str(cfg.paths.cache_dir))
    if cfg.pipeline.get("reuse", True) and any(next((cache / st).glob("*/DONE.json"), None) for st in stages):
        _check_job_records(cfg)


def _check_job_records(cfg) -> None:
    """The ``DONE.json`` of every planned job that will be reused: one line for a damaged one (not a traceback
    half-way through the pipeline)."""
    from dasslab.provenance import read_record
    from dasslab.workflow.plan import plan

    planned, _ = plan(cfg, list(cfg.pipeline.rows))
    for name, job in planned.items():
        done = job.out / "DONE.json"
        if done.is_file():
            read_record(done, "job record", f"delete it to run job {name} again")
