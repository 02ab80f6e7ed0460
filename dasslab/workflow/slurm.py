"""The pipeline on Slurm: every job of a plan its own Slurm job, ``afterok`` on the jobs it needs.

``dasslab-train experiment=… hydra/launcher=slurm`` (and ``dasslab-reproduce tableN --launcher slurm``)
plans as usual (:func:`dasslab.workflow.plan.plan`), then submits through submitit — the library under
hydra-submitit-launcher — one Slurm job per job that has not finished, with
``--dependency=afterok:<the Slurm jobs of what it needs>`` (``--kill-on-invalid-dep=yes``: a failed
upstream cancels what waits for it), and one last small job, after all of them, that writes the
experiment's results (``results.json``, ``results.md``, the W&B summary) into ``paths.output_dir``. Then
it returns: nothing waits on the login node. ``slurm.json`` in the output folder lists the Slurm jobs.

* **Shape.** ``trainer.num_nodes`` nodes x ``trainer.devices`` tasks per node for a job that trains
  (Lightning's SLURM environment makes the tasks the DDP ranks; :mod:`dasslab.workflow.jobrun` runs one rank per
  task), one task for the others. Cluster settings are those of ``hydra/launcher=slurm``
  (``conf/hydra/launcher/slurm.yaml``: partition, account, GPUs per node, CPUs per task, time limit …).
* **Once.** A job another pipeline already submitted and that is still queued or running
  (``<cache>/<stage>/<key>.slurm.json``, checked with ``squeue``) is waited for, not submitted again; a
  finished one (``DONE.json``) is not submitted at all.
* **Requeue.** Slurm signals a job ``signal_delay_s`` before its time limit (and on preemption); submitit
  then requeues it under the same job id — the jobs that wait for it keep waiting — up to
  ``max_num_timeout`` time-outs, and the job continues from its run folder's ``checkpoints/last.ckpt``
  (``resume=auto``).
* **Logs.** ``<paths.cache_dir>/.submitit/<job id>_<task>_log.{out,err}``; the results job's in
  ``<paths.output_dir>/.submitit/``.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasslab.errors import ConfigError
from dasslab.utils.io import atomic_write_text, locked
from dasslab.workflow.jobrun import trainer_processes

# keys of hydra/launcher=slurm that are per job here (or submitit's own), not cluster settings
PER_JOB = {"_target_", "submitit_folder", "tasks_per_node", "nodes", "name", "array_parallelism",
           "max_num_timeout"}
BASE = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
        "stderr_to_stdout"}          # submitit's executor-independent parameters (others get the slurm_ prefix)
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def launcher_params(launcher) -> dict:
    """The cluster settings of a ``hydra/launcher=slurm`` config node, as plain values (a setting whose
    interpolation does not resolve here is left to Slurm's default)."""
    out = {}
    for key in launcher:
        if key in PER_JOB:
            continue
        try:
            value = launcher[key]
        except Exception:  # noqa: BLE001 - e.g. ${trainer.devices} outside the task's config
            continue
        out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    out["max_num_timeout"] = int(launcher.get("max_num_timeout") or 0)
    return out


def hydra_slurm_params() -> dict | None:
    """The Slurm settings when this run was started with ``hydra/launcher=slurm``, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover
        return None
    if not HydraConfig.initialized():
        return None
    launcher = HydraConfig.get().get("launcher")
    if launcher is None or not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return None
    return launcher_params(launcher)


def job_shape(cfg: DictConfig, name: str) -> dict:
    """``nodes`` and ``tasks_per_node`` of job ``name``'s Slurm job: its trainer's, one task for a stage that
    does not train with Lightning."""
    if trainer_processes(cfg) is None:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} (job {name}): a Slurm job needs a number of "
                          f"devices per node (its tasks per node); expected an integer >= 1")
    if str(cfg.stage.get("kind")) != "fit":
        return {"nodes": 1, "tasks_per_node": 1}
    return {"nodes": int(cfg.trainer.get("num_nodes") or 1), "tasks_per_node": int(cfg.trainer.devices)}


class SlurmJob:
    """What every task of a pipeline job's Slurm job runs (pickled by submitit): :func:`dasslab.workflow.jobrun.run_job`
    as this task's rank. ``checkpoint`` is submitit's requeue hook: the requeued job resumes
    (``resume=auto``: the run folder's ``checkpoints/last.ckpt``)."""

    def __init__(self, job, reuse: bool = True, resume: bool = False):
        self.job, self.reuse, self.resume = job, reuse, resume

    def __call__(self) -> dict:
        from dasslab.checkpoints import trust_checkpoints
        from dasslab.workflow.jobrun import launched_world, run_job

        job = self.job
        if self.resume:
            OmegaConf.update(job.cfg, "resume", "auto", force_add=True)
        with trust_checkpoints(job.cfg.get("trust_checkpoint")):
            return run_job(job, self.reuse, launched_world())

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmJob(self.job, self.reuse, resume=True))


def slurm_executor(folder: Path, max_num_timeout: int):
    """submitit's Slurm executor writing its files in ``folder``."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("hydra/launcher=slurm: submitit is not installed; expected pip install -e '.[slurm]'") \
            from None
    return submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=max_num_timeout)


def squeue_state(job_id: str) -> str | None:
    """The state ``squeue`` reports for ``job_id`` (None once Slurm has forgotten it or when squeue fails)."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    state = proc.stdout.strip().splitlines()
    return state[0].strip() if proc.returncode == 0 and state else None


class SlurmEngine:
    """Submits planned jobs (:meth:`submit_plan`) and a results job (:meth:`submit_results`) to Slurm.

    ``executor`` (folder, max_num_timeout) -> a submitit-like executor and ``state`` (job id) -> squeue state
    are swappable (tests). Jobs handled once by this engine are not handled again (several experiments of
    one table share jobs)."""

    def __init__(self, params: dict, executor: Callable = slurm_executor, state: Callable = squeue_state):
        self.params = dict(params)
        self.make_executor, self.state = executor, state
        self.handled: dict[str, str | None] = {}          # run folder -> Slurm job id (None: finished before)
        self.log: list[str] = []

    # -------------------------------------------------------------- one submission
    def submit_call(self, fn, name: str, folder: Path, after=(), nodes: int = 1, tasks_per_node: int = 1,
                    **overrides) -> str:
        """Submit ``fn()`` as one Slurm job; returns its id."""
        params = {k: v for k, v in self.params.items() if k != "max_num_timeout"}
        params.update(overrides, name=name, nodes=nodes, tasks_per_node=tasks_per_node)
        extra = dict(params.pop("additional_parameters", None) or {})
        if tasks_per_node * nodes > 1:       # a rank that fails ends the others (not a 30-minute collective wait)
            params["srun_args"] = [*(params.get("srun_args") or []), "--kill-on-bad-exit=1"]
        if after:
            params["dependency"] = "afterok:" + ":".join(str(a) for a in after)
            extra.setdefault("kill-on-invalid-dep", "yes")
        if extra:
            params["additional_parameters"] = extra
        executor = self.make_executor(Path(folder), int(self.params.get("max_num_timeout") or 0))
        executor.update_parameters(**{k if k in BASE else f"slurm_{k}": v for k, v in params.items()
                                      if v is not None})
        job = executor.submit(fn)
        return str(job.job_id)

    # -------------------------------------------------------------- a plan
    def submit_plan(self, planned: dict, reuse: bool = True, experiment: str = "") -> dict[str, str | None]:
        """Every planned job as a Slurm job after the Slurm jobs of what it needs: ``{label: job id}``, None for
        a job that has finished (``DONE.json``) and needs no Slurm job."""
        ids: dict[str, str | None] = {}
        for label, job in planned.items():
            where = str(job.out)
            if where in self.handled:
                ids[label] = self.handled[where]
                continue
            after = [ids[n] for n in job.needs if ids.get(n)]
            with locked(job.out.parent / f"{job.key}.submit.lock"):
                ids[label] = self._submit_once(job, label, after, reuse, experiment)
            self.handled[where] = ids[label]
        return ids

    def _submit_once(self, job, label: str, after: list, reuse: bool, experiment: str) -> str | None:
        if reuse and (job.out / "DONE.json").is_file():
            self.log.append(f"{label}: finished ({job.out})")
            return None
        record = job.out.parent / f"{job.key}.slurm.json"
        if reuse and record.is_file():
            known = json.loads(record.read_text()).get("job_id")
            if known and self.state(known) in ACTIVE:
                self.log.append(f"{label}: already queued or running as Slurm job {known}")
                return str(known)
        name = f"{experiment}:{label}" if experiment else label
        jid = self.submit_call(SlurmJob(job, reuse), name, Path(job.cfg.paths.cache_dir) / ".submitit", after,
                               **job_shape(job.cfg, label))
        atomic_write_text(record, json.dumps({"job_id": jid, "job": label, "experiment": experiment,
                                              "after": after}, indent=2))
        self.log.append(f"{label}: Slurm job {jid}" + (f" after {', '.join(after)}" if after else ""))
        return jid

    def submit_results(self, cfg: DictConfig, planned: dict, skipped: dict, ids: dict, finish: Callable) -> str:
        """The job that writes the experiment's results once every job it ran has finished (afterok)."""
        out = Path(cfg.paths.output_dir)
        after = sorted({i for i in ids.values() if i})
        return self.submit_call(functools.partial(finish, cfg, planned, skipped), f"{cfg.task_name}:results",
                                out / ".submitit", after, gpus_per_node=None, timeout_min=60)


def submit_pipeline(cfg: DictConfig, planned: dict, skipped: dict, params: dict, finish: Callable,
                    reuse: bool = True, engine: SlurmEngine | None = None) -> dict:
    """Submit the plan of one experiment and its results job; write ``slurm.json`` and return what was submitted.
    Where every job has finished already, the results are written here and now instead."""
    engine = engine or SlurmEngine(params)
    ids = engine.submit_plan(planned, reuse, str(cfg.task_name))
    for line in engine.log:
        print(f"[slurm] {line}", flush=True)
    engine.log.clear()
    out = Path(cfg.paths.output_dir)
    if not any(ids.values()):
        print("[slurm] every job has finished: the results are written now", flush=True)
        return finish(cfg, planned, skipped)
    results = engine.submit_results(cfg, planned, skipped, ids, finish)
    record = {"jobs": ids, "results_job": results, "cache": str(cfg.paths.cache_dir)}
    atomic_write_text(out / "slurm.json", json.dumps(record, indent=2))
    print(f"[slurm] results: Slurm job {results} writes {out / 'results.md'} after the others "
          f"(squeue --me; sacct -j {','.join([*(i for i in ids.values() if i), results])})", flush=True)
    return {"submitted": ids, "results_job": results}
