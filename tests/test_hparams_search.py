"""`dasslab-train -m hparams_search=digits`: an Optuna search whose objective is what dasslab-train returns."""

import json
import os
import subprocess
import sys

import pytest
import yaml

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "data.limit_val=8"]


def test_train_returns_the_target_val_miou_of_the_objective_row():
    from omegaconf import OmegaConf

    from dasslab.commands.train import objective

    cfg = OmegaConf.create({"pipeline": {"rows": ["source_only", "full"], "objective": None}})
    result = {"source_only": {"miou": 20.0}, "full": {"miou": 31.5, "std": 0.2}}
    assert objective(cfg, result) == 31.5                                  # the last row by default
    cfg.pipeline.objective = "source_only"
    assert objective(cfg, result) == 20.0
    assert objective(cfg, {"stage": "source", "miou": 12.25}) == 12.25    # a single stage
    assert objective(cfg, {"plan": {}}) is None                           # a dry run has none
    # a table reports the held-apart split; a search chooses on val
    assert objective(cfg, {"source_only": {"miou": 19.0, "val_miou": 20.5}}) == 20.5


def test_a_two_trial_optuna_search_at_smoke_size(tmp_path, digits_data_dir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optional extra `optuna` (make install)")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "DASSLAB_DATA": str(digits_data_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.train", "-m", "hparams_search=digits", *SMOKE,
                           "hydra.sweeper.n_trials=2", f"paths.output_dir={sweep}"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a search chooses on val (results.json's numbers are the held-apart test split's)
    trials = [json.loads((sweep / str(k) / "results.json").read_text())["full"]["val_miou"] for k in (0, 1)]
    configs = [yaml.safe_load((sweep / str(k) / ".hydra" / "overrides.yaml").read_text()) for k in (0, 1)]
    assert all(any(o.startswith("guidance.shift=") for o in c) and any(o.startswith("ptl.N=") for o in c)
               for c in configs)                                           # λ and N are what Optuna draws
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(trials))               # the objective is the full row's mIoU
    assert set(best["best_params"]) == {"guidance.shift", "ptl.N"}
    caches = sorted(p.parent.parent.name for p in (tmp_path / "cache").glob("*/*/DONE.json"))
    # source and DDPM once for both trials; each trial its adaptation and the calibration of its own shift
    assert caches == ["adapt", "adapt", "calibrate", "calibrate", "diffusion", "source"]
