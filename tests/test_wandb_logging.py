"""W&B (offline): runs grouped by experiment with the row as job type, the whole config and the run's record
in each run's config, an experiment summary run that also carries reused jobs' results, and pictures logged
as uint8 that are not black."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40"]


def _offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"), key=lambda p: p.name)


def _record(run: Path, timeout: float = 30.0) -> bytes:
    """The run's transaction log (what `wandb sync` uploads): config, group, job type, summary …

    W&B's service process writes it after ``run.finish()`` returns (seen with two test processes side by
    side: only the header at first), so read it once it has records and has stopped growing."""
    import time

    path = run / f"run-{run.name.rsplit('-', 1)[-1]}.wandb"
    deadline, last = time.monotonic() + timeout, -1
    while True:
        data = path.read_bytes() if path.is_file() else b""
        if (len(data) > 64 and len(data) == last) or time.monotonic() > deadline:
            return data
        last = len(data)
        time.sleep(0.5)


def _tables(run: Path, key: str) -> list[dict]:
    folder = run / "files" / "media" / "table"
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{key}_[0-9]*.table.json"))]


def test_as_uint8():
    from dasslab.visualize import as_uint8, to_uint8

    x = np.array([[0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(as_uint8(x), [[0, 128, 255, 255]])
    u = np.array([[3, 200]], dtype=np.uint8)
    assert as_uint8(u) is u
    t = torch.linspace(-1, 1, 3 * 4 * 5).reshape(3, 4, 5)
    np.testing.assert_array_equal(as_uint8(t), to_uint8(t))


def test_wandb_offline_run_has_the_whole_config_and_visible_pictures(compose, tmp_path, monkeypatch):
    from dasslab.commands.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    out = tmp_path / "run"
    cfg = compose("stage=diffusion", *SMOKE, "logger=wandb", "task_name=table9_probe", "diffusion.sample_every=2",
                  "data.limit_train=12", f"paths.output_dir={out}")
    w = cfg.logger.wandb
    assert (w.project, w.group, w.job_type, w.name) == ("dasslab", "table9_probe", "diffusion", "table9_probe-seed0")
    assert list(w.tags) == ["table9_probe", "digits", "small", "diffusion"]

    run(cfg)
    runs = _offline_runs(out)
    assert len(runs) == 1, list(out.iterdir())
    logged = sorted((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert logged, sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*"))
    pics = [np.asarray(Image.open(p).convert("RGB")) for p in logged]
    assert all(p.max() > 0 for p in pics)  # float pictures would be drawn black
    saved = np.asarray(Image.open(sorted((out / "samples").glob("*.png"))[-1]).convert("RGB"))
    assert any(p.shape == saved.shape and np.array_equal(p, saved) for p in pics)  # the same pixels, lossless
    record = _record(runs[0])
    git = json.loads((out / "run_info.json").read_text())["git_revision"]
    # the config sent is the whole run: dataset, trainer, data settings, the git revision; the model's own
    # hyper-parameters under `module`
    for text in (b"table9_probe", b"dasslab", b"accumulate_grad_batches", b"limit_train", b"generate",
                 b"git_revision", git.encode() if git else b"versions", b"module", b"ema_decay"):
        assert text in record, text


def test_an_experiment_reaches_wandb_even_when_its_jobs_are_reused(compose, tmp_path, monkeypatch):
    """Group = the experiment, job type = the row; each pipeline run ends with a summary run of the results."""
    from dasslab.commands.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = ["stage=pipeline", *SMOKE, "pipeline.rows=[source_only]", "logger=wandb", "task_name=probe_exp",
            "data.limit_val=8"]
    first = run(compose(*args, f"paths.output_dir={tmp_path / 'a'}"))
    job_dir = Path(first["source_only"]["run_dir"])
    assert not (job_dir / "wandb").exists()                               # the job's run is the pipeline's
    job_run, summary_a = _offline_runs(tmp_path / "a")
    if b"probe_exp-summary" in _record(job_run):
        job_run, summary_a = summary_a, job_run
    record = _record(job_run)
    assert b"probe_exp" in record and b"source_only" in record           # group and job type
    again = run(compose(*args, f"paths.output_dir={tmp_path / 'b'}"))     # every job reused: no training
    assert again["source_only"]["miou"] == first["source_only"]["miou"]
    assert len(_offline_runs(tmp_path / "a")) == 2 and not (job_dir / "wandb").exists()
    for out in (tmp_path / "a", tmp_path / "b"):
        summary = summary_a if out.name == "a" else _offline_runs(out)[0]
        assert len(_offline_runs(out)) == (2 if out.name == "a" else 1)
        record = _record(summary)
        assert b"probe_exp-summary" in record and b"summary" in record and b"git_revision" in record
        (table,) = _tables(summary, "results")
        row = dict(zip(table["columns"], table["data"][0]))
        assert row["row"] == "source_only" and row["miou"] == first["source_only"]["miou"]
        assert row["reused"] is (out.name == "b")


def test_the_summary_carries_the_miou_over_n_curves(compose, tmp_path, monkeypatch):
    from dasslab.workflow.wandb_report import log_experiment

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose("stage=pipeline", "logger=wandb", "task_name=curves", f"paths.output_dir={tmp_path / 'p'}")
    runs = {}
    for label, values in (("full@seed0", [10.0, 12.5]), ("full@seed1", [11.0, 13.0]), ("source_only", None)):
        d = tmp_path / label
        d.mkdir()
        if values:
            curve = [{"n": 100 * (i + 1), "step": 5 * (i + 1), "miou": v} for i, v in enumerate(values)]
            (d / "ptl_curve.json").write_text(json.dumps(curve))
        runs[label] = {"run_dir": str(d), "miou": (values or [9.0])[-1]}
    summary = {"source_only": {"miou": 9.0}, "full": {"miou": 12.75, "std": 0.35, "seeds": [0, 1]}}
    timings = {k: {"seconds": 1.0, "reused": False} for k in runs}
    log_experiment(cfg, summary, runs, timings, "# results")
    (run,) = _offline_runs(tmp_path / "p")
    (curves,) = _tables(run, "miou_over_n")
    assert curves["columns"] == ["row", "n", "step", "miou"]
    assert curves["data"] == [["full@seed0", 100, 5, 10.0], ["full@seed0", 200, 10, 12.5],
                              ["full@seed1", 100, 5, 11.0], ["full@seed1", 200, 10, 13.0]]
    (table,) = _tables(run, "results")
    full = dict(zip(table["columns"], next(r for r in table["data"] if r[0] == "full")))
    assert full["seeds"] == 2 and full["std"] == 0.35 and full["seconds"] == 2.0
    assert b"miou/full" in _record(run)


def test_a_pipeline_puts_every_offline_run_in_one_folder_and_prints_how_to_sync_it(tmp_path, digits_data_dir):
    """Each job's run (in the pipeline cache) and the summary run land in <output>/wandb; the run's last line
    is the `wandb sync` command for that folder."""
    import os
    import subprocess
    import sys

    out = tmp_path / "exp"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "DASSLAB_DATA": str(digits_data_dir),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.train", "stage=pipeline", *SMOKE,
                           "pipeline.rows=[source_only,oracle]", "logger=wandb", "task_name=one_folder",
                           "data.limit_val=8", f"paths.output_dir={out}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _offline_runs(out)
    records = [_record(r) for r in runs]
    assert len(runs) == 3, runs                                            # source_only, oracle, the summary
    assert sum(b"one_folder-summary" in r for r in records) == 1
    assert any(b"source_only" in r and b"one_folder-summary" not in r for r in records)
    assert any(b"oracle" in r and b"one_folder-summary" not in r for r in records)
    cache = tmp_path / "cache"
    assert cache.is_dir() and not list(cache.rglob("offline-run-*"))      # nothing left in the jobs' folders
    assert proc.stdout.strip().splitlines()[-1].endswith(f"wandb sync {out / 'wandb'}")
