"""``dasslab-train stage=<name> …`` (Hydra entry point): runs ``conf/stage/<name>.yaml`` via ``run_stage``."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from omegaconf import DictConfig

from dasslab.commands.app import entry_point


def run(cfg: DictConfig):
    """Validate the config once, then run ``cfg.stage`` (``conf/stage/<name>.yaml``); returns its result."""
    from dasslab.checks.settings import validate_config
    from dasslab.workflow.stages import run_stage

    validate_config(cfg)
    return run_stage(cfg)


@entry_point("train")  # hydra.main + one-line errors, one folder per job (dasslab/commands/app.py)
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    if isinstance(result, dict) and "miou" in result:
        print(f"mIoU {result['miou']} ({result.get('split')}); run directory: {cfg.paths.output_dir}")
    else:
        print(f"run directory: {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
