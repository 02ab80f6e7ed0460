"""Running a plan here: the jobs one after the other, or up to ``pipeline.parallel`` at once.

The ready loop is :class:`graphlib.TopologicalSorter` over the jobs' ``needs``: a job starts when every job
it needs has finished; among ready jobs the highest ``priority`` first, then plan order. Who runs one job
(this process, or a child that starts DDP ranks) is :func:`dasslab.workflow.jobrun.run_job`'s decision.
"""

from __future__ import annotations

import time
from graphlib import TopologicalSorter
from pathlib import Path

from dasslab.errors import ConfigError
from dasslab.workflow.jobrun import World, die_with_parent, run_job
from dasslab.workflow.plan import Job


def job_log(job: Job) -> Path:
    """Where a job run in its own process (``pipeline.parallel`` > 1) writes its output."""
    return job.out.parent / f"{job.key}.log"


def _run_job_child(job: Job, reuse: bool, threads: int) -> dict:
    """:func:`run_job` in a worker process: the run's trust setting, a share of the CPU threads, and
    its output (Lightning's included) in :func:`job_log` rather than interleaved with the other jobs'."""
    import os
    import sys

    import torch

    from dasslab.utils.safe_load import trust_checkpoints

    die_with_parent()
    log_path = job_log(job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as fh:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        torch.set_num_threads(threads)
        try:
            with trust_checkpoints(job.cfg.get("trust_checkpoint")):
                return run_job(job, reuse)
        except BaseException:
            import traceback

            traceback.print_exc()       # the whole story in the job's log; the parent prints one line
            raise


def execute(planned: dict[str, Job], reuse: bool = True, parallel: int = 1,
            world: World | None = None) -> dict[str, dict]:
    """Run the planned jobs; with ``parallel`` > 1, up to that many at once (each in its own spawned
    process, started as soon as every job it needs has finished). Jobs still share the per-job lock,
    so pipelines started side by side never train one job twice. The first failure stops the plan.
    With ``world`` (ranks launched outside dasslab) the jobs run one after the other on every rank
    (:func:`dasslab.workflow.jobrun.run_job`: rank 0 decides, the others follow)."""
    if parallel < 1:
        raise ConfigError(f"pipeline.parallel={parallel}: expected an integer >= 1 (jobs run at once)")
    if parallel == 1 or world is not None:     # the plan's order already puts every job after what it needs
        done = {}
        for name, job in planned.items():
            done[name] = run_job(job, reuse, world)
            if done[name].get("summary") and (world is None or world.rank == 0):
                print(f"[pipeline] {name}: {done[name]['summary']}", flush=True)
        return done
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // parallel)
    order = {name: i for i, name in enumerate(planned)}
    graph = TopologicalSorter({name: job.needs for name, job in planned.items()})
    graph.prepare()
    ready: list[str] = []
    running, done, started = {}, {}, {}
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        while graph.is_active():
            for name in graph.get_ready():
                if name not in planned:
                    raise ConfigError(f"pipeline: a job waits for {name!r}, which is not planned")
                ready.append(name)
            ready.sort(key=lambda n: (-planned[n].priority, order[n]))
            read_in_place = False
            for name in list(ready):
                job = planned[name]
                if reuse and (job.out / "DONE.json").is_file():
                    done[name] = run_job(job, reuse)       # finished before: read here, no process to start
                    graph.done(name)
                    read_in_place = True
                elif len(running) < parallel:
                    running[pool.submit(_run_job_child, job, reuse, threads)] = name
                    started[name] = time.perf_counter()
                    print(f"[pipeline] {name}: started stage={job.stage} in {job.out} (output: {job_log(job)})",
                          flush=True)
                else:
                    continue
                ready.remove(name)
            if read_in_place:
                continue                                   # what those made ready is looked at first
            if not running:
                raise ConfigError(f"pipeline: jobs {ready} cannot start")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    done[name] = future.result()
                except BaseException as err:
                    print(f"[pipeline] {name}: failed ({type(err).__name__}: {err}); its output: "
                          f"{job_log(planned[name])}", flush=True)
                    for other in running:
                        other.cancel()
                    raise
                graph.done(name)
                score, said = done[name].get("miou"), done[name].get("summary")
                print(f"[pipeline] {name}: done in {time.perf_counter() - started[name]:.0f} s"
                      + (f" (target-val mIoU {score:.2f})" if isinstance(score, (int, float)) else "")
                      + (f": {said}" if said else ""), flush=True)
    return {name: done[name] for name in planned}
