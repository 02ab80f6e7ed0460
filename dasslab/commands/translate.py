"""``dasslab-translate``: export translated source images phi^n(x) with their labels.

The library behind it: :mod:`dasslab.export.translations`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from dasslab.commands.app import entry_point
from dasslab.export.translations import export_translations


@entry_point("translate")  # hydra.main + one-line errors, one folder per job (dasslab/commands/app.py)
def main(cfg: DictConfig) -> None:
    from dasslab.checks.settings import validate_config
    from dasslab.utils.runinfo import save_config

    validate_config(cfg)
    save_config(cfg, Path(cfg.paths.output_dir))
    folders = export_translations(cfg)
    for f in folders:
        print(f"translated dataset: {f}")


if __name__ == "__main__":
    main()
