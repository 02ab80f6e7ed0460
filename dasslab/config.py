"""Where the Hydra configs live.

An installed wheel ships them as the data package ``dasslab.conf`` (pyproject maps the
repository's ``conf/`` there); a source checkout (or an older editable install) reads the
repository's top-level ``conf/`` directly.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

REPO_CONF = Path(__file__).resolve().parents[1] / "conf"


def find_conf_dir() -> str:
    """The absolute path of the folder holding ``train.yaml`` (packaged copy first, then the repo's)."""
    try:
        packaged = Path(str(importlib.resources.files("dasslab.conf")))
    except (ModuleNotFoundError, TypeError):
        packaged = None
    for folder in (packaged, REPO_CONF):
        if folder is not None and (folder / "train.yaml").is_file():
            return str(folder)
    raise FileNotFoundError(f"dasslab configs not found: neither the package dasslab.conf nor {REPO_CONF} "
                            f"holds train.yaml (reinstall dasslab)")


CONF_DIR = find_conf_dir()
