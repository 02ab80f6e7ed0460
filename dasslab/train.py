"""``dasslab-train stage=source|oracle|diffusion|adapt|pipeline …`` (Hydra entry point)."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra
from omegaconf import DictConfig

from dasslab.config import CONF_DIR


def run(cfg: DictConfig):
    """Dispatch on ``cfg.stage``; returns the stage's result (metrics record, checkpoint path, …)."""
    from dasslab import stages
    from dasslab.validate import validate_config

    validate_config(cfg)
    stage = cfg.stage
    if stage in ("source", "oracle"):
        return stages.train_segmenter(cfg, stage)
    if stage == "diffusion":
        return stages.train_diffusion(cfg)
    if stage == "adapt":
        return stages.adapt_baseline(cfg)
    if stage == "translate":
        from dasslab.translate import export_translations

        return export_translations(cfg)
    if stage == "pipeline":
        from dasslab.pipeline import run_pipeline

        return run_pipeline(cfg)
    raise AssertionError(stage)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    if isinstance(result, dict) and "miou" in result:
        print(f"mIoU {result['miou']} ({result.get('split')}); run directory: {cfg.paths.output_dir}")
    else:
        print(f"run directory: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
