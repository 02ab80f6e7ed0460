"""A real SLURM run: Hydra multirun -> hydra-submitit-launcher -> Slurm (1 node x 2 tasks) -> Lightning DDP.

``scripts/slurm/start_slurm.sh`` installs (apt-get, as root) and starts a single-node Slurm with
accounting; the test submits one small training run through ``hydra/launcher=slurm`` with
``trainer.strategy=ddp trainer.devices=2`` on CPU (gloo), so both Slurm tasks are DDP ranks
(Lightning's SLURMEnvironment), and checks the run's ``metrics.json``. Only daemons this test
started are stopped afterwards (``scripts/slurm/stop_slurm.sh`` ends the pids it recorded). Where
Slurm cannot be had (not root, no apt-get, install fails) the test is skipped with the reason.

``make slurm-test`` runs only this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts" / "slurm"

# What the Slurm job runs. Switch the stage here (e.g. to the adaptation stage with its inputs).
STAGE = ["stage=source"]
JOB = STAGE + ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.num_nodes=1", "trainer.accelerator=cpu"]


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


def test_launcher_config_follows_the_trainer_and_the_environment(monkeypatch):
    """`hydra/launcher=slurm`: one task per device, one node per trainer node; cluster settings from env."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    monkeypatch.setenv("DASSLAB_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("DASSLAB_SLURM_GPUS_PER_NODE", "4")
    monkeypatch.setenv("DASSLAB_SLURM_TIME_MIN", "90")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", ["hydra/launcher=slurm", "trainer.devices=4", "trainer.num_nodes=2",
                                      "hydra.launcher.account=lab"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["tasks_per_node"], launcher["nodes"], launcher["gpus_per_node"]) == (4, 2, 4)
    assert (launcher["partition"], launcher["timeout_min"], launcher["account"]) == ("gpu-long", 90, "lab")
    monkeypatch.delenv("DASSLAB_SLURM_GPUS_PER_NODE")
    monkeypatch.delenv("DASSLAB_SLURM_PARTITION")
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] is None and launcher["partition"] is None  # the cluster's defaults


@pytest.mark.slow
def test_slurm_multirun_runs_ddp_over_two_tasks(slurm_cluster, digits_data_dir, tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "DASSLAB_DATA": str(digits_data_dir), "DASSLAB_ROOT": str(tmp_path),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "DASSLAB_SLURM_TIME_MIN": "10"}
    cmd = [sys.executable, "-m", "dasslab.train", "-m", "hydra/launcher=slurm", *JOB, *DDP,
           f"hydra.sweep.dir={sweep}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=540)
    except subprocess.TimeoutExpired:  # leave no job of ours behind on a cluster we did not start
        ids = [p.name for p in (sweep / ".submitit").glob("*") if p.is_dir()]
        subprocess.run(["scancel", *ids], capture_output=True)
        raise
    logs = sorted((sweep / ".submitit").glob("*/*_log.*"))
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{tails}"

    # the run's own outputs, in the sweep's job folder
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert 0.0 <= record["miou"] <= 100.0
    assert record["split"] == "target_val"
    assert len(record["per_class_iou"]) == 11
    assert (sweep / "0" / ".hydra" / "config.yaml").is_file()
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()

    # one Slurm job, two tasks, each a DDP rank of one process group that Lightning set up from SLURM
    jobs = [p for p in (sweep / ".submitit").iterdir() if p.is_dir()]
    assert len(jobs) == 1, jobs
    for rank in (0, 1):
        out = (jobs[0] / f"{jobs[0].name}_{rank}_log.out").read_text()
        err = (jobs[0] / f"{jobs[0].name}_{rank}_log.err").read_text()
        assert f"global_rank={rank}(2)" in out
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in out + err
        assert "SLURM auto-requeueing enabled" in out + err  # only under Lightning's SLURMEnvironment
    assert "distributed_backend=gloo" in (jobs[0] / f"{jobs[0].name}_0_log.out").read_text()
