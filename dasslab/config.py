"""Where the Hydra configs live: the repository's top-level ``conf/`` (editable install)."""

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
