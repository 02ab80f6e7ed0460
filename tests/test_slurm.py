"""Slurm: an experiment's jobs as Slurm jobs with afterok dependencies, requeue with resume, DDP over tasks.

Without Slurm: the engine (:mod:`dasslab.workflow.slurm`) against a recording executor — what it submits, after
what, in which shape, what it leaves alone — and the launcher config.

With a real Slurm (``scripts/slurm/start_slurm.sh`` installs it with apt-get as root and starts a
single node with accounting; skipped with the reason where it cannot): a smoke experiment of two
dependent stages — the source model (1 task), then the adaptation as 1 node x 2 tasks DDP on CPU
(gloo) — launched by ``dasslab-train -m hydra/launcher=slurm …``: hydra-submitit-launcher runs the
pipeline as a one-task Slurm job that submits the two jobs and a results job (afterok) and ends; the
results job writes ``results.json`` in the sweep's job folder; ``sacct`` shows the jobs in order, the
second with two tasks. A job preempted (Slurm's warning signal) is requeued and resumes. Only daemons
this module started are stopped afterwards (``scripts/slurm/stop_slurm.sh``).

``make slurm-test`` runs only this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"
TESTS = Path(__file__).resolve().parent

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv",
         "trainer.accelerator=cpu"]
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.num_nodes=1"]


# --------------------------------------------------------------------------- the engine, no Slurm needed
class Recorder:
    """A submitit-like executor that records each submission and hands out job ids 100, 101, …"""

    def __init__(self, log: list, base: int):
        self.log, self.params, self.base = log, {}, base

    def update_parameters(self, **params):
        self.params.update(params)

    def submit(self, fn):
        job_id = str(self.base + len(self.log))
        self.log.append({"id": job_id, "fn": fn, **self.params})
        return type("Job", (), {"job_id": job_id})()


def _engine(log, states=None, base=100):
    from dasslab.workflow.slurm import SlurmEngine

    return SlurmEngine({"partition": "gpu", "timeout_min": 30, "gpus_per_node": 2, "max_num_timeout": 3,
                        "additional_parameters": {"qos": "high"}},
                       executor=lambda folder, max_timeouts: Recorder(log, base),
                       state=lambda i: (states or {}).get(i))


def _plan(compose, tmp_path, *extra):
    from dasslab.workflow.plan import plan

    stage = "{name:timed,kind:run,ignore:[],run:{_target_:stage_fixtures.timed,_partial_:true}}"
    cfg = compose("debug=smoke", "stage=pipeline", "pipeline.rows=[c]", f"+pipeline.jobs.a={{stage:{stage}}}",
                  f"+pipeline.jobs.b={{stage:{stage},set:{{seed:1}}}}",
                  "+pipeline.jobs.c={stage:source,needs:{segmenter.init_ckpt:a,diffusion_ckpt:b}}",
                  f"+pipeline_test.log={tmp_path / 'times.log'}", "+pipeline_test.sleep=0", *DDP,
                  f"paths.output_dir={tmp_path / 'p'}", *extra)
    return cfg, *plan(cfg, ["c"])


def test_engine_submits_each_job_after_what_it_needs_in_its_shape(compose, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    from dasslab.workflow.results import write_results
    from dasslab.workflow.slurm import SlurmJob, submit_pipeline

    cfg, planned, skipped = _plan(compose, tmp_path)
    log: list = []
    out = submit_pipeline(cfg, planned, skipped, {}, finish=write_results, engine=_engine(log))
    a, b, c, results = log
    assert [s["fn"].job.name for s in (a, b, c)] == ["a", "b", "c"]
    assert "slurm_dependency" not in a and "slurm_dependency" not in b
    assert c["slurm_dependency"] == "afterok:100:101"                       # after both jobs it needs
    assert c["slurm_additional_parameters"] == {"qos": "high", "kill-on-invalid-dep": "yes"}
    assert (c["nodes"], c["tasks_per_node"], c["gpus_per_node"]) == (1, 2, 2)   # a fit job: one task per device
    assert (a["nodes"], a["tasks_per_node"]) == (1, 1)                      # a stage that does not train: one
    assert c["slurm_srun_args"] == ["--kill-on-bad-exit=1"] and "slurm_srun_args" not in a
    assert c["slurm_partition"] == "gpu" and c["timeout_min"] == 30 and c["name"].endswith(":c")
    assert isinstance(c["fn"], SlurmJob) and c["fn"].job.cfg.trainer.devices == 2
    # the results job: after every job, one task, no GPU, writes the experiment's results
    assert results["slurm_dependency"] == "afterok:100:101:102" and "gpus_per_node" not in results
    assert results["fn"].func is write_results and results["fn"].args[0].task_name == cfg.task_name
    assert out == {"submitted": {"a": "100", "b": "101", "c": "102"}, "results_job": "103"}
    assert json.loads((tmp_path / "p" / "slurm.json").read_text())["results_job"] == "103"
    # each job records its Slurm job; while that one is queued or running, it is waited for, not resubmitted
    assert json.loads((planned["c"].out.parent / f"{planned['c'].key}.slurm.json").read_text())["job_id"] == "102"
    again: list = []
    submit_pipeline(cfg, planned, skipped, {}, finish=write_results,
                    engine=_engine(again, states={"100": "RUNNING", "101": "PENDING"}, base=200))
    assert [s["fn"].job.name for s in again[:-1]] == ["c"]                  # 102 is gone from squeue
    assert again[0]["slurm_dependency"] == "afterok:100:101"
    assert again[1]["slurm_dependency"] == "afterok:100:101:200"


def test_engine_leaves_finished_jobs_and_writes_the_results_when_all_are_done(compose, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    from dasslab.workflow.execute import execute
    from dasslab.workflow.results import write_results
    from dasslab.workflow.slurm import submit_pipeline

    cfg, planned, skipped = _plan(compose, tmp_path)
    execute({k: planned[k] for k in ("a", "b")})                           # a and b finished before
    log: list = []
    submit_pipeline(cfg, planned, skipped, {}, finish=write_results, engine=_engine(log))
    assert [s["fn"].job.name for s in log[:-1]] == ["c"] and "slurm_dependency" not in log[0]
    assert log[-1]["slurm_dependency"] == "afterok:100"
    # a plan whose jobs have all finished: nothing is submitted, the results are written here
    (planned["c"].out).mkdir(parents=True)
    (planned["c"].out / "DONE.json").write_text(json.dumps({"miou": 12.5, "run_dir": str(planned["c"].out)}))
    log.clear()
    summary = submit_pipeline(cfg, planned, skipped, {}, finish=write_results, engine=_engine(log))
    assert log == [] and summary["c"]["miou"] == 12.5
    assert json.loads((tmp_path / "p" / "results.json").read_text())["c"]["miou"] == 12.5


def test_a_requeued_job_resumes_from_its_last_checkpoint(compose, tmp_path, monkeypatch):
    """submitit's requeue hook (a time-out or preemption) resubmits the job with resume=auto."""
    monkeypatch.syspath_prepend(str(TESTS))
    from dasslab.workflow.slurm import SlurmJob

    cfg, planned, _ = _plan(compose, tmp_path)
    first = SlurmJob(planned["c"])
    delayed = first.checkpoint()
    again = delayed.function
    assert isinstance(again, SlurmJob) and again.resume and not first.resume and again.job is planned["c"]
    stage = "{name:seen,kind:run,ignore:[],run:{_target_:stage_fixtures.timed,_partial_:true}}"
    from dasslab.workflow.plan import plan

    cfg = compose("debug=smoke", "stage=pipeline", f"+pipeline.jobs.s={{stage:{stage}}}",
                  f"+pipeline_test.log={tmp_path / 's.log'}", "+pipeline_test.sleep=0",
                  f"paths.output_dir={tmp_path / 's'}")
    job = plan(cfg, ["s"])[0]["s"]
    SlurmJob(job, resume=True)()                                              # what the requeued job runs
    assert json.loads((job.out / "DONE.json").read_text())["run_dir"] == str(job.out)
    assert job.cfg.resume == "auto"


def test_launcher_config_follows_the_trainer_and_the_environment(monkeypatch):
    """`hydra/launcher=slurm`: one task per device, one node per trainer node; cluster settings from env;
    a pipeline (it only plans and submits) is one task."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from dasslab.workflow.slurm import launcher_params

    monkeypatch.setenv("DASSLAB_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("DASSLAB_SLURM_GPUS_PER_NODE", "4")
    monkeypatch.setenv("DASSLAB_SLURM_TIME_MIN", "90")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", ["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
                                      "hydra.launcher.account=lab"], return_hydra_config=True)
        pipe = hydra_compose("train", ["hydra/launcher=slurm", "experiment=table2f_full", "trainer.devices=4"],
                             return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["nodes"], launcher["gpus_per_node"]) == (4, 2, 4)
    assert (launcher["partition"], launcher["timeout_min"], launcher["account"]) == ("gpu-long", 90, "lab")
    assert launcher["max_num_timeout"] == 3
    assert (pipe.hydra.launcher.tasks_per_node, pipe.hydra.launcher.nodes) == (1, 1)
    params = launcher_params(cfg.hydra.launcher)        # what the engine takes: cluster settings, no shape
    assert params["partition"] == "gpu-long" and "tasks_per_node" not in params and params["max_num_timeout"] == 3
    monkeypatch.delenv("DASSLAB_SLURM_GPUS_PER_NODE")
    monkeypatch.delenv("DASSLAB_SLURM_PARTITION")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] is None and launcher["partition"] is None  # the cluster's defaults


# --------------------------------------------------------------------------- a real Slurm
def _cluster_answers() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node Slurm; stopped afterwards only if this fixture started it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher not installed "
                        "(pip install -e '.[slurm]')")
    was_running = _cluster_answers()
    env = {**os.environ, "SLURM_WAIT_S": os.environ.get("SLURM_WAIT_S", "90")}
    try:
        proc = subprocess.run(["bash", str(SCRIPTS / "start_slurm.sh")], capture_output=True, text=True, env=env,
                              timeout=420)
    except subprocess.TimeoutExpired:  # e.g. apt-get waiting for a package mirror it cannot reach
        if not was_running:
            subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], capture_output=True, timeout=120)
        pytest.skip("no Slurm on this machine: start_slurm.sh did not finish within 420 s (installing?)")
    if proc.returncode == 2:  # the script's "Slurm cannot be had here"
        reason = next((ln for ln in proc.stderr.splitlines() if "UNAVAILABLE" in ln), proc.stderr.strip()[-300:])
        print(reason)
        pytest.skip(f"no Slurm on this machine: {reason}")
    if proc.returncode != 0:
        if not was_running:  # leave nothing of a half-started cluster behind
            subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], capture_output=True, timeout=120)
        pytest.fail(f"start_slurm.sh failed:\n{proc.stderr[-4000:]}")
    try:
        yield
    finally:
        if not was_running:
            subprocess.run(["bash", str(SCRIPTS / "stop_slurm.sh")], capture_output=True, timeout=120)


def _env(tmp_path, data) -> dict:
    return {**os.environ, "DASSLAB_DATA": str(data), "DASSLAB_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "DASSLAB_SLURM_TIME_MIN": "10"}


def _sacct(ids: list[str]) -> list[dict]:
    fields = "JobID,JobName%40,State,NNodes,NTasks,AllocCPUS,Start,End,Elapsed"
    proc = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(ids), "-o", fields], capture_output=True,
                          text=True, timeout=60)
    keys = [f.split("%")[0] for f in fields.split(",")]
    return [dict(zip(keys, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]


def _step_tasks(job_id: str) -> str:
    """The number of tasks of a job's first step (the srun submitit starts): sacct lists it per step."""
    proc = subprocess.run(["sacct", "-P", "-n", "-j", job_id, "-o", "JobID,NTasks,NNodes"], capture_output=True,
                          text=True, timeout=60)
    return next((line.split("|")[1] for line in proc.stdout.splitlines() if line.startswith(f"{job_id}.0|")), "")


def _wait_for(ids: list[str], timeout: float) -> list[dict]:
    """sacct's rows of ``ids`` once none of them is pending or running (or the time is up)."""
    deadline = time.time() + timeout
    while True:
        rows = _sacct(ids)
        if len(rows) == len(ids) and not any(r["State"].split()[0] in ("PENDING", "RUNNING", "REQUEUED",
                                                                        "CONFIGURING", "COMPLETING") for r in rows):
            return rows
        if time.time() > deadline:
            subprocess.run(["scancel", *ids], capture_output=True)
            return rows
        time.sleep(2)


@pytest.mark.slow
def test_slurm_runs_an_experiment_as_dependent_jobs_the_second_ddp_over_two_tasks(slurm_cluster, digits_data_dir,
                                                                                   tmp_path):
    """``dasslab-train -m hydra/launcher=slurm <experiment>``: hydra-submitit-launcher runs the sweep's job (the
    pipeline: one task) on Slurm; it submits the experiment's jobs with afterok and ends at once."""
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "dasslab.commands.train", "-m", "hydra/launcher=slurm", "stage=pipeline",
           "pipeline.rows=[source_only,ptl_none]", *SMOKE,
           "+pipeline.jobs.ptl_none.set.trainer={strategy:ddp,devices:2,num_nodes:1}", f"paths.output_dir={sweep}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path, digits_data_dir), cwd=tmp_path,
                          timeout=300)
    planner_logs = "\n".join(p.read_text()[-2000:] for p in sorted((sweep / ".submitit").glob("*/*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + planner_logs
    submitted_in = time.perf_counter() - t0
    out = sweep / "0"                                      # the sweep's one job: the experiment's folder
    record = json.loads((out / "slurm.json").read_text())
    src, ada, results = record["jobs"]["source_only"], record["jobs"]["ptl_none"], record["results_job"]
    planner = next(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir() and p.name.isdigit())
    rows = {r["JobID"]: r for r in _wait_for([planner, src, ada, results], timeout=480)}
    cache = tmp_path / "cache"                            # beside the sweep folder given on the command line
    logs = sorted((cache / ".submitit").glob("*/*_log.*")) + sorted((out / ".submitit").glob("*/*_log.*"))
    tails = "\n".join(f"--- {p.relative_to(tmp_path)}\n{p.read_text()[-2000:]}" for p in logs)
    print(f"planned and submitted in {submitted_in:.1f} s; sacct -X:\n"
          + "\n".join("|".join(r.values()) for r in rows.values()))
    assert all(r["State"] == "COMPLETED" for r in rows.values()), f"{rows}\n{tails}"

    # afterok: each job started once what it needs had ended; the planner did not wait for them
    assert rows[src]["End"] <= rows[ada]["Start"] and rows[ada]["End"] <= rows[results]["Start"]
    assert rows[planner]["End"] <= rows[ada]["Start"]
    assert (rows[planner]["NNodes"], _step_tasks(planner), rows[planner]["AllocCPUS"]) == ("1", "1", "1")
    assert (rows[src]["NNodes"], _step_tasks(src), rows[src]["AllocCPUS"]) == ("1", "1", "1")
    assert (rows[ada]["NNodes"], _step_tasks(ada), rows[ada]["AllocCPUS"]) == ("1", "2", "2")   # 1 node x 2 tasks
    # the second job's two tasks were the two DDP ranks of one gloo process group that Lightning set up from Slurm
    job_logs = cache / ".submitit" / ada
    for rank in (0, 1):
        text = (job_logs / f"{ada}_{rank}_log.out").read_text() + (job_logs / f"{ada}_{rank}_log.err").read_text()
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text, tails
        assert "SLURM auto-requeueing enabled" in text         # only under Lightning's SLURMEnvironment
    assert "distributed_backend=gloo" in (job_logs / f"{ada}_0_log.out").read_text() + \
        (job_logs / f"{ada}_0_log.err").read_text()
    # the results job wrote the experiment's results from the jobs' records, in the sweep's job folder
    summary = json.loads((out / "results.json").read_text())
    assert set(summary) == {"source_only", "ptl_none"}
    assert all(0.0 <= summary[r]["miou"] <= 100.0 for r in summary)
    adapted = Path(summary["ptl_none"]["run_dir"])
    assert adapted.parent.parent == cache and json.loads((adapted / "run_info.json").read_text())[
        "effective_batch_size"] == 2 * 4                                 # 2 devices x batch 4 (debug=smoke)
    assert (sweep / "multirun.yaml").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "sweep"]    # nothing else (no outputs/, …)


@pytest.mark.slow
def test_a_preempted_slurm_job_is_requeued_and_resumes(slurm_cluster, digits_data_dir, tmp_path):
    """Slurm's warning signal (USR2, sent before a time limit or on preemption): submitit requeues the job under
    the same id and the requeued attempt runs with resume=auto; the job then completes."""
    out, log = tmp_path / "p", tmp_path / "attempts.log"
    stage = "{name:attempts,kind:run,ignore:[],run:{_target_:slurm_fixtures.attempts,_partial_:true}}"
    env = {**_env(tmp_path, digits_data_dir), "PYTHONPATH": os.pathsep.join([str(TESTS),
                                                                            os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "dasslab.commands.train", "stage=pipeline", "pipeline.rows=[a]", *SMOKE,
           f"+pipeline.jobs.a={{stage:{stage}}}", f"+pipeline_test.log={log}", "+pipeline_test.sleep=120",
           "hydra/launcher=slurm", f"paths.output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = json.loads((out / "slurm.json").read_text())["jobs"]["a"]
    deadline = time.time() + 120
    while not log.is_file() and time.time() < deadline:       # the first attempt has started
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
    deadline = time.time() + 120
    while time.time() < deadline and _sacct([job])[0]["State"].split()[0] not in ("PENDING", "COMPLETED", "FAILED"):
        time.sleep(1)
    # Slurm holds a requeued job back (begin time ~2 minutes later); let it start now (the test's patience only)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=60)
    rows = _wait_for([job], timeout=300)
    attempts = [json.loads(line) for line in log.read_text().splitlines()]
    print(f"sacct: {rows}; attempts: {attempts}")
    assert rows[0]["State"] == "COMPLETED", rows
    assert attempts == [{"restart": 0, "resume": None}, {"restart": 1, "resume": "auto"}]
    assert (tmp_path / "cache" / "attempts").is_dir() and next((tmp_path / "cache").glob("attempts/*/DONE.json"))
