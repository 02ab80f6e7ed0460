"""How one planned job of the pipeline runs, and which process does the bookkeeping.

One process plans, locks and records; the processes that train are never the ones that hold locks:

* A job that trains on one device runs in the calling process (:func:`dasslab.workflow.stages.run_stage`).
* A ``fit`` job whose trainer needs several processes (``trainer.devices`` > 1, ``num_nodes`` > 1, or
  not a number) runs in a child process ``python -m dasslab.workflow.jobrun <run folder>/job.yaml``, which
  Lightning turns into the job's DDP world (it starts the other ranks itself). The pipeline process
  holds the job's lock and writes its ``DONE.json``; the ranks only train.
* Ranks started outside dasslab (the tasks of a Slurm step, ``srun -n 2 dasslab-train experiment=…``,
  or ``torchrun``; see :func:`launched_world`): every rank plans the same jobs in the same order; rank 0
  alone takes each job's lock, decides (reuse it, run it on all ranks, or run it alone) and writes the
  decision in ``<cache>/<stage>/.ranks/<key>.<launch>.json``; the other ranks read the decision (they wait
  for a file, never for a lock) and start their child as their own rank of the job (Lightning reads the
  rank from Slurm's or torchrun's variables; the port is one per job and launch).

A Slurm job of the Slurm engine (:mod:`dasslab.workflow.slurm`) is such a launch of one job.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dasslab.errors import ConfigError
from dasslab.utils.io import atomic_write_text, locked

POLL_S = 1.0
JOB_FILE = "job.yaml"
RESULT_FILE = ".result.json"
JOB_PORTS = (20000, 32000)        # [first, end) of the MASTER_PORTs jobs of a launch use
# the variables through which a launcher names a process's rank: a job that starts its own DDP processes
# must not inherit them (Lightning would take the pipeline's launch for the job's world)
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
               "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


@dataclass(frozen=True)
class World:
    """The processes of one launch that all run this pipeline: this one's ``rank`` of ``size``; ``name`` is
    the same on every rank and different for every launch (a requeued Slurm job is a new launch)."""

    rank: int
    size: int
    name: str


def launched_world() -> World | None:
    """The launch this process is one rank of, when something outside dasslab started several: the tasks of
    a Slurm step (``SLURM_STEP_NUM_TASKS`` > 1; a batch script itself is no step) or ``torchrun``
    (``WORLD_SIZE`` > 1 with a ``RANK``). None for one process."""
    env = os.environ
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks > 1 and "SLURM_PROCID" in env:
        name = "slurm" + ".".join(env.get(k, "0") for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT"))
        return World(int(env["SLURM_PROCID"]), tasks, name)
    size = int(env.get("WORLD_SIZE") or 1)
    if size > 1 and "RANK" in env and "TORCHELASTIC_RUN_ID" in env:
        name = f"torchrun{env['TORCHELASTIC_RUN_ID']}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return World(int(env["RANK"]), size, name)
    return None


def trainer_processes(cfg) -> int | None:
    """How many processes job ``cfg``'s trainer runs as: devices x nodes for a ``fit`` stage, 1 for a stage
    that does not train with Lightning; None where ``trainer.devices`` is not a number (``auto``, a list)."""
    if str(cfg.stage.get("kind")) != "fit":
        return 1
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1) or 1
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        return None
    return devices * int(nodes)


def die_with_parent() -> None:
    """Linux: end this process when the process that started it ends (a killed pipeline must not leave its
    jobs running on, holding their locks). Elsewhere a no-op."""
    import signal

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- one job
def run_job(job, reuse: bool = True, world: World | None = None) -> dict:
    """Run planned ``job`` (``name``, ``cfg``, ``key``, ``out``) in its cache folder, or reuse the finished
    run there; with ``world`` (:func:`launched_world`), as one rank of that launch (see the module docstring).
    Returns the job's record (``DONE.json``'s content; ``reused`` when it was not run now)."""
    if world is not None and world.size > 1 and world.rank > 0:
        return _follow(job, world)
    finished = job.out / "DONE.json"
    with locked(job.out.parent / f"{job.key}.lock"):
        if reuse and finished.is_file():
            _decide(job, world, "reuse")
            print(f"[pipeline] {job.name}: reusing {job.out}", flush=True)
            return {**json.loads(finished.read_text()), "reused": True}
        try:
            from dasslab.checks.settings import validate_config

            validate_config(job.cfg)
            n = trainer_processes(job.cfg)
            on_ranks = world is not None and world.size > 1 and n != 1
            if on_ranks and n is not None and n != world.size:
                raise ConfigError(f"trainer.devices x trainer.num_nodes = {n} in job {job.name}, but {world.size} "
                                  f"processes were launched; expected one process per device")
            print(f"[pipeline] {job.name}: running stage={job.stage} in {job.out}"
                  + (f" on {world.size} ranks" if on_ranks else ""), flush=True)
            t0 = time.perf_counter()
            if on_ranks or n != 1 or world is not None:
                write_job_file(job)
            _decide(job, world, "ranks" if on_ranks else "alone")
        except BaseException:
            _decide(job, world, "failed")
            raise
        if on_ranks:
            result = run_child(job, _rank_env(job, world))
        elif n != 1 or world is not None:     # its own DDP processes, or alone out of a launch of several
            result = run_child(job, _own_env())
        else:
            from dasslab.workflow.stages import run_stage

            result = dict(run_stage(job.cfg) or {})
        result["run_dir"] = str(job.out)
        result["seconds"] = round(time.perf_counter() - t0, 1)      # wall time of the stage (the timing table)
        atomic_write_text(finished, json.dumps(result, indent=2, default=str))
    return result


def job_file(job) -> Path:
    return job.out / JOB_FILE


def write_job_file(job) -> Path:
    """``<run folder>/job.yaml``: the job's resolved config, what a child process (any rank) runs."""
    from omegaconf import OmegaConf

    path = job_file(job)
    atomic_write_text(path, OmegaConf.to_yaml(job.cfg, resolve=True))
    return path


def _decision_file(job, world: World) -> Path:
    return job.out.parent / ".ranks" / f"{job.key}.{world.name}.json"


def _decide(job, world: World | None, what: str) -> None:
    """Rank 0's decision for the other ranks of ``world``: reuse | ranks (all run it) | alone | failed."""
    if world is not None and world.size > 1:
        atomic_write_text(_decision_file(job, world), json.dumps({"job": job.name, "decision": what}))


def _follow(job, world: World) -> dict:
    """A rank > 0: wait for rank 0's decision on ``job`` and, where all ranks run it, run this rank's part."""
    path = _decision_file(job, world)
    while not path.is_file():
        time.sleep(POLL_S)
    decision = json.loads(path.read_text())["decision"]
    if decision == "failed":
        raise RuntimeError(f"job {job.name}: rank 0 failed before starting it; see rank 0's output")
    if decision == "ranks":
        run_child(job, _rank_env(job, world), rank=world.rank)
    return {"follower": True, "decision": decision}


def _own_env() -> dict:
    """The environment of a child that starts its own DDP processes: no launcher's rank variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAUNCH_VARS}


def _rank_env(job, world: World) -> dict:
    """The environment of this rank's child: the launch's variables, and a port of this job's own (every rank
    computes the same), so that the jobs of one launch never meet on one port. The ports (20000-31999) lie below
    Linux's ephemeral range (32768-60999), where any outgoing connection of the machine may already hold one."""
    digest = int(hashlib.sha1(f"{world.name}/{job.key}".encode()).hexdigest()[:8], 16)
    return {**os.environ, "MASTER_PORT": str(JOB_PORTS[0] + digest % (JOB_PORTS[1] - JOB_PORTS[0]))}


def run_child(job, env: dict, rank: int = 0) -> dict:
    """``python -m dasslab.workflow.jobrun job.yaml`` with ``env``; rank 0's record (the child writes it)."""
    result = job.out / RESULT_FILE
    if rank == 0 and result.exists():
        result.unlink()
    cmd = [sys.executable, "-m", "dasslab.workflow.jobrun", str(job_file(job))]
    code = subprocess.call(cmd, env=env, preexec_fn=die_with_parent)
    if code != 0:
        raise RuntimeError(f"job {job.name}: its process ended with exit status {code} ({' '.join(cmd)})")
    if rank != 0:
        return {}
    if not result.is_file():
        raise RuntimeError(f"job {job.name}: its process wrote no {result}")
    return json.loads(result.read_text())


# --------------------------------------------------------------------------- the child
def main(argv: list[str] | None = None) -> int:
    """``python -m dasslab.workflow.jobrun JOB_YAML``: run the job in this process (one rank of its DDP world, or the
    rank 0 that starts the others); rank 0 writes the stage's record to ``.result.json`` beside the file."""
    from omegaconf import OmegaConf

    from dasslab.checkpoints import trust_checkpoints
    from dasslab.workflow.stages import run_stage

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m dasslab.workflow.jobrun RUN_FOLDER/job.yaml  (what the pipeline starts for a job "
              "that runs as several processes)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    path = Path(args[0])
    cfg = OmegaConf.load(path)
    with trust_checkpoints(cfg.get("trust_checkpoint")):
        record = dict(run_stage(cfg) or {})
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        atomic_write_text(path.parent / RESULT_FILE, json.dumps(record, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
