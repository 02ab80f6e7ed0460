"""Runs you can trust: one seed one result, one folder per multirun job, resume keeps its history."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from dasslab.data.transforms import build_transform, seed_transforms, seed_worker

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]


def _run(cfg):
    from dasslab.commands.train import run

    return run(cfg)


def _csv_rows(out: Path) -> list[dict]:
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- augmentation seeding
class _Coordinates(Dataset):
    """Images whose pixel values encode their coordinates: a crop reveals its offset."""

    def __init__(self, n: int, transform):
        self.n, self.transform = n, transform
        yy, xx = np.mgrid[0:32, 0:32]
        self.image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        out = self.transform(image=self.image, mask=np.zeros((32, 32), np.uint8))
        return torch.tensor([int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])])  # crop offset (y, x)


def _offsets(seed: int, workers: int) -> list[tuple]:
    ds = _Coordinates(8, build_transform(True, crop=(8, 8), hflip=False))
    seed_transforms(ds, seed)
    loader = DataLoader(ds, batch_size=1, num_workers=workers, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    return [tuple(b[0].tolist()) for b in loader]


def test_augmentation_is_fixed_by_the_seed_in_the_main_process():
    assert _offsets(0, 0) == _offsets(0, 0)
    assert _offsets(0, 0) != _offsets(1, 0)


def test_each_dataloader_worker_draws_its_own_reproducible_augmentations():
    first, again = _offsets(0, 2), _offsets(0, 2)
    assert first == again
    # workers 0 and 1 take samples 0 and 1; unseeded copies of one pipeline would crop both alike
    assert first[0] != first[1] or first[2] != first[3]


# --------------------------------------------------------------------------- whole runs
def test_two_runs_with_one_seed_give_identical_metrics(compose, tmp_path):
    records, losses = [], []
    for name in ("a", "b"):
        cfg = compose(*SMOKE, "stage=source", "seed=0", f"paths.output_dir={tmp_path / name}")
        records.append(_run(cfg))
        losses.append([r["train/loss"] for r in _csv_rows(tmp_path / name) if r.get("train/loss")])
    assert losses[0] == losses[1] and len(losses[0]) == 3
    assert records[0]["miou"] == records[1]["miou"]
    assert records[0]["per_class_iou"] == records[1]["per_class_iou"]
    other = compose(*SMOKE, "stage=source", "seed=1", f"paths.output_dir={tmp_path / 'c'}")
    _run(other)
    assert [r["train/loss"] for r in _csv_rows(tmp_path / "c") if r.get("train/loss")] != losses[0]


def test_resume_keeps_the_earlier_rows_of_metrics_csv(compose, tmp_path):
    out = tmp_path / "run"
    _run(compose(*SMOKE, "stage=source", f"paths.output_dir={out}"))
    first = [int(r["step"]) for r in _csv_rows(out) if r.get("train/loss")]
    assert first == [0, 1, 2]
    assert (out / "checkpoints" / "step000003.ckpt").is_file()  # smoke runs checkpoint
    _run(compose(*SMOKE, "stage=source", "resume=auto", "segmenter.max_steps=6", f"paths.output_dir={out}"))
    steps = [int(r["step"]) for r in _csv_rows(out) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3, 4, 5]


def test_csv_logger_drops_only_the_rows_an_interrupted_attempt_logs_again(tmp_path):
    from dasslab.loggers import ResumableCSVLogger

    log = ResumableCSVLogger(tmp_path, name="csv", version="")
    for step in range(5):
        log.log_metrics({"loss": float(step)}, step=step)
    log.save()
    again = ResumableCSVLogger(tmp_path, name="csv", version="")  # resumed from a checkpoint at step 3
    for step in (3, 4, 5):
        again.log_metrics({"loss": 10.0 + step, "lr": 0.1}, step=step)
    again.save()
    rows = _csv_rows(tmp_path)
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0),
                                                                  (4, 14.0), (5, 15.0)]
    assert rows[0]["lr"] == "" and rows[-1]["lr"] == "0.1"


@pytest.mark.slow
def test_multirun_gives_every_job_its_own_folder(tmp_path, digits_data_dir):
    env = dict(os.environ, DASSLAB_ROOT=str(tmp_path), DASSLAB_DATA=str(digits_data_dir), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.train", "-m", "stage=source", *SMOKE,
                           "segmenter.lr=0.001,0.01"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.parent for p in (tmp_path / "outputs").rglob(".hydra/config.yaml"))
    assert len(runs) == 2 and runs[0] != runs[1]
    seen = set()
    for run in runs:
        saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        assert Path(saved["paths"]["output_dir"]) == run  # the job's config names the job's folder
        metrics = json.loads((run / "metrics.json").read_text())
        assert Path(metrics["checkpoint"]).parent.parent == run
        hp = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["hyper_parameters"]
        assert hp["optim"]["lr"] == saved["segmenter"]["lr"]  # the weights come from this job's settings
        seen.add(saved["segmenter"]["lr"])
        assert json.loads((run / "run_info.json").read_text())["seed"] == saved["seed"]
    assert seen == {0.001, 0.01}
