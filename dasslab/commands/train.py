"""``dasslab-train stage=<name> …`` (Hydra entry point): runs ``conf/stage/<name>.yaml`` via ``run_stage``.

It returns the target-val mIoU the run reached (:func:`objective`), so that a Hydra sweeper can optimise it
(``-m hparams_search=digits``: Optuna, ``conf/hparams_search/``).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pathlib import Path

from omegaconf import DictConfig

from dasslab.commands.app import entry_point


def run(cfg: DictConfig):
    """Validate the config once, then run ``cfg.stage`` (``conf/stage/<name>.yaml``); returns its result."""
    from dasslab.checks.settings import validate_config
    from dasslab.workflow.stages import run_stage

    validate_config(cfg)
    return run_stage(cfg)


def objective(cfg: DictConfig, result) -> float | None:
    """The target-val mIoU of a run: a stage's ``miou``; a pipeline's row ``pipeline.objective`` (default: the
    last of ``pipeline.rows``; its mean over seeds). None where there is none (a dry run, a DDPM, Slurm)."""
    if not isinstance(result, dict):
        return None
    if "miou" in result:
        return None if result["miou"] is None else float(result["miou"])
    pipeline = cfg.get("pipeline") or {}
    rows = list(pipeline.get("rows") or [])
    row = pipeline.get("objective") or (rows[-1] if rows else None)
    entry = result.get(row) if row else None
    # a search chooses on val: a table's numbers are on the held-apart split where the data has one
    miou = (entry.get("val_miou", entry.get("miou"))) if isinstance(entry, dict) else None
    return None if miou is None else float(miou)


def wandb_offline_folder(cfg: DictConfig) -> Path | None:
    """Where this run's offline W&B runs are (every job of a pipeline writes there), or None."""
    w = (cfg.get("logger") or {}).get("wandb")
    if w is None or not (w.get("offline") or os.environ.get("WANDB_MODE") in ("offline", "dryrun")):
        return None
    return Path(str(w.get("save_dir") or cfg.paths.output_dir)) / "wandb"


@entry_point("train")  # hydra.main + one-line errors, one folder per job (dasslab/commands/app.py)
def main(cfg: DictConfig) -> float | None:
    result = run(cfg)
    miou = objective(cfg, result)
    if miou is not None:
        print(f"mIoU {miou} (target_val); run directory: {cfg.paths.output_dir}")
    else:
        print(f"run directory: {cfg.paths.output_dir}")
    folder = wandb_offline_folder(cfg)
    if folder is not None and folder.is_dir():
        print(f"W&B offline runs: {folder}; upload them with: wandb sync {folder}")
    return miou


if __name__ == "__main__":
    main()
