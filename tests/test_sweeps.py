"""Sweeps as Hydra users expect: one folder per sweep, each job a subfolder, nothing under the current
folder; the pipeline cache beside it; sweeping N or lambda reuses what does not depend on them; the sweep
folder and the cache read back as tables."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

SMOKE = ["debug=smoke", "dataset=digits", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]


def test_changing_n_or_lambda_keeps_the_source_model_and_the_ddpm(compose):
    from dasslab.workflow.plan import plan

    def keys(*extra):
        cfg = compose("experiment=table2f_full", *SMOKE, *extra)
        planned, _ = plan(cfg, list(cfg.pipeline.rows))
        return {name: job.key for name, job in planned.items()}

    base = keys("ptl.N=10")
    assert set(base) == {"source_only", "diffusion", "full"}
    for other in (keys("ptl.N=20"), keys("ptl.N=10", "guidance.scale=3.0"), keys("ptl.N=30", "ptl.t_max=300")):
        assert other["source_only"] == base["source_only"] and other["diffusion"] == base["diffusion"]
        assert other["full"] != base["full"]
    # what the source model does read still counts: its augmentation's noise range
    assert keys("ptl.N=10", "augment.t_max=300")["source_only"] != base["source_only"]


def test_a_sweep_is_one_folder_and_the_tables_read_it(tmp_path, digits_data_dir):
    cwd, sweep = tmp_path / "cwd", tmp_path / "sweeps" / "n_sweep"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DASSLAB_ROOT"}
    env.update(DASSLAB_DATA=str(digits_data_dir), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dasslab.commands.train", "-m", "experiment=table2f_full", *SMOKE, "ptl.N=10,20",
           f"paths.output_dir={sweep}"]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # one folder: multirun.yaml at its top, job k in k/ with its config, log and results; nothing in the cwd
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for k, n in ((0, 10), (1, 20)):
        job = sweep / str(k)
        saved = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert saved["paths"]["output_dir"] == str(job) and saved["ptl"]["N"] == n
        assert saved["paths"]["cache_dir"] == str(sweep.parent / "cache")
        assert (job / "train.log").is_file() and "outputs: " in (job / "train.log").read_text()
        assert json.loads((job / "results.json").read_text())["full"]["miou"] is not None
    # the cache beside the sweep: the source model and the DDPM once, one adaptation per N
    cache = sweep.parent / "cache"
    assert [len(list((cache / s).glob("*/DONE.json"))) for s in ("source", "diffusion", "adapt")] == [1, 1, 2]
    assert "source_only: reusing" in (sweep / "1" / "train.log").read_text() + proc.stdout

    # the sweep folder as a table: Table 2's title, the shared source model once, the swept N as the only label
    from dasslab.workflow.tables import find_runs, write_tables

    tables = write_tables(find_runs([sweep]), tmp_path / "t")
    assert list(tables) == ["Table 2 — digits"]
    rows = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "t" / "table_2_digits.csv"))}
    assert set(rows) == {"source only", "(f) SGG + PTL, ptl.N=10", "(f) SGG + PTL, ptl.N=20"}
    assert all(r["status"] == "ok" and r["runs_ok"] == r["runs"] == "1" for r in rows.values())
    md = tables["Table 2 — digits"]
    assert md.index("| source only |") < md.index("| (f) SGG + PTL, ptl.N=10 |")

    # the cache as a table: each finished job a row named by its job
    tables = write_tables(find_runs([cache]), tmp_path / "c")
    rows = {r["setting"]: r for r in csv.DictReader(open(tmp_path / "c" / "runs_digits.csv"))}
    assert set(rows) == {"source_only", "full, ptl.N=10", "full, ptl.N=20"}


def _job_dir(tmp_path, monkeypatch, overrides, mode, job_dir):
    """What :func:`dasslab.commands.app.job_output_dir` makes of a job Hydra started with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    from dasslab.commands.app import job_output_dir

    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path / "root"))
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", ["stage=pipeline", "logger=wandb", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode[mode]
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.overrides.task = list(overrides)
        cfg.hydra.output_subdir = None
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)     # put back as it was after the test
    HydraConfig.instance().set_config(cfg)
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    assert job_output_dir(task) == job_dir
    return task


def test_the_job_folder_the_cache_and_the_wandb_group_of_a_run_and_a_sweep_job(tmp_path, monkeypatch):
    """Default: outputs/cache under paths.root_dir; paths.output_dir=DIR: DIR's sibling; paths.cache_dir wins.
    A sweep job's output is its subfolder and its W&B group names the sweep."""
    out = tmp_path / "elsewhere" / "sweep"
    task = _job_dir(tmp_path, monkeypatch, [f"paths.output_dir={out}"], "MULTIRUN", out / "3")
    assert (task.paths.output_dir, task.paths.cache_dir) == (str(out / "3"), str(tmp_path / "elsewhere" / "cache"))
    assert task.logger.wandb.group == "pipeline/sweep"
    task = _job_dir(tmp_path, monkeypatch, [f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'c'}"], "RUN",
                    out)
    assert (task.paths.output_dir, task.paths.cache_dir) == (str(out), str(tmp_path / "c"))
    assert task.logger.wandb.group == "pipeline"
    task = _job_dir(tmp_path, monkeypatch, [], "RUN", tmp_path / "root" / "outputs" / "pipeline" / "now")
    assert task.paths.cache_dir == str(tmp_path / "root" / "outputs" / "cache")
