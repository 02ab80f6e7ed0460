"""An experiment under DDP runs to completion: the pipeline process plans and locks, every job that trains
starts its own two ranks (gloo on CPU), no rank waits on a lock another holds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = ["debug=smoke", "dataset=digits", "dataset.generate.n_train=120", "dataset.generate.n_val=40",
         "logger=csv"]
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_trainer_processes_counts_the_ranks_of_a_job(compose):
    from dasslab.workflow.jobrun import trainer_processes

    assert trainer_processes(compose("stage=source", *DDP)) == 2
    assert trainer_processes(compose("stage=source", "trainer.devices=2", "trainer.num_nodes=3")) == 6
    assert trainer_processes(compose("stage=source")) == 1
    assert trainer_processes(compose("stage=source", "trainer.devices=auto")) is None
    assert trainer_processes(compose("stage=translate", *DDP)) == 1       # not a Lightning fit: one process


def test_a_launch_of_several_ranks_is_recognised(monkeypatch):
    from dasslab.workflow.jobrun import launched_world

    for var in ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert launched_world() is None
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert launched_world() is None                           # a batch script (no step), or a step of one task
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    world = launched_world()
    assert (world.rank, world.size) == (1, 2) and "77" in world.name


@pytest.mark.slow
def test_a_jobs_port_is_shared_by_its_ranks_and_outside_the_ephemeral_range():
    """Every rank of a launch computes one MASTER_PORT per job; it lies below Linux's ephemeral ports (32768+), which
    any outgoing connection may hold (a Slurm test once failed with 'address already in use' on 3xxxx)."""
    from types import SimpleNamespace

    from dasslab.workflow.jobrun import World, _rank_env

    ports = set()
    for i in range(500):
        job = SimpleNamespace(key=f"{i:012x}")
        a = _rank_env(job, World(0, 2, "4242"))["MASTER_PORT"]
        assert a == _rank_env(job, World(1, 2, "4242"))["MASTER_PORT"]
        ports.add(int(a))
    assert min(ports) >= 20000 and max(ports) < 32768 and len(ports) > 400


def test_experiment_under_ddp_runs_to_completion(tmp_path, digits_data_dir):
    out = tmp_path / "run"
    env = dict(os.environ, DASSLAB_ROOT=str(tmp_path), DASSLAB_DATA=str(digits_data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dasslab.commands.train", "experiment=table2f_full", *SMOKE, *DDP,
           f"paths.output_dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert set(summary) == {"source_only", "full"}
    assert all(0.0 <= summary[r]["miou"] <= 100.0 for r in summary)
    text = proc.stdout + proc.stderr
    # every job that trains (source, DDPM, adaptation) ran as two ranks of one gloo group
    assert text.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 3, text[-4000:]
    assert "distributed_backend=gloo" in text
    for row in summary:
        run = Path(summary[row]["run_dir"])
        info = json.loads((run / "run_info.json").read_text())
        assert info["effective_batch_size"] == 2 * 4                     # 2 devices x batch 4 (debug=smoke)
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "DONE.json").is_file()


@pytest.mark.slow
def test_a_pipeline_launched_as_two_slurm_tasks_runs_each_job_once_over_both(tmp_path, digits_data_dir):
    """What `srun -n 2 dasslab-train stage=pipeline …` (a 2-task Slurm step) does, the tasks' variables set by
    hand: rank 0 plans, locks and records; rank 1 only follows rank 0's decision and trains as rank 1."""
    out = tmp_path / "run"
    step = dict(os.environ, DASSLAB_ROOT=str(tmp_path), DASSLAB_DATA=str(digits_data_dir), OMP_NUM_THREADS="1",
                SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_STEP_NUM_TASKS="2", SLURM_NNODES="1",
                SLURM_NODEID="0", SLURM_NODELIST="127.0.0.1", SLURM_JOB_ID="4242", SLURM_STEP_ID="0",
                SLURM_JOB_NAME="dasslab-test")
    cmd = [sys.executable, "-m", "dasslab.commands.train", "stage=pipeline", "pipeline.rows=[source_only]",
           *SMOKE, *DDP,
           f"paths.output_dir={out}"]
    procs = [subprocess.Popen(cmd, env={**step, "SLURM_PROCID": str(k), "SLURM_LOCALID": str(k)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    try:
        logs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "running stage=source" in logs[0] and "running stage" not in logs[1]      # rank 0 alone runs the job
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1] and "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0]
    (decision,) = (tmp_path / "cache" / "source" / ".ranks").glob("*.slurm4242.0.0.json")
    assert json.loads(decision.read_text())["decision"] == "ranks"
    summary = json.loads((out / "results.json").read_text())
    assert 0.0 <= summary["source_only"]["miou"] <= 100.0
    assert json.loads((Path(summary["source_only"]["run_dir"]) / "run_info.json").read_text())[
        "effective_batch_size"] == 2 * 4
