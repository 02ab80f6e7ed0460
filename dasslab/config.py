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
    try:  # a data-only (namespace) package: files() is a MultiplexedPath, its children real paths
        packaged = importlib.resources.files("dasslab.conf") / "train.yaml"
    except (ModuleNotFoundError, TypeError):
        packaged = None
    for train_yaml in (packaged, REPO_CONF / "train.yaml"):
        if isinstance(train_yaml, Path) and train_yaml.is_file():
            return str(train_yaml.parent.resolve())
    raise FileNotFoundError(f"dasslab configs not found: neither the package dasslab.conf nor {REPO_CONF} "
                            f"holds train.yaml (reinstall dasslab)")


CONF_DIR = find_conf_dir()

