"""What a run directory records so that a result can be reproduced (docs/method.md §8)."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import subprocess
from pathlib import Path

from dasslab.utils.io import atomic_write_text

log = logging.getLogger(__name__)

_PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "torchmetrics", "timm",
             "diffusers", "albumentations", "segmentation-models-pytorch", "numpy")


def git_revision(cwd: str | Path | None = None) -> str | None:
    """The commit of the code that runs (with ``-dirty`` when the tree has changes)."""
    src = Path(__file__).resolve().parents[2] if cwd is None else Path(cwd)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def effective_batch(batch_size: int, devices: int, accumulate: int, num_nodes: int = 1) -> int:
    return int(batch_size) * int(devices) * int(accumulate) * int(num_nodes)


def check_effective_batch(effective: int, paper: int | None, what: str) -> str | None:
    """A warning text when the effective batch differs from the paper's (else None)."""
    if paper is None or effective == paper:
        return None
    msg = (f"{what}: effective batch size {effective} (devices x batch x accumulation) differs from the "
           f"paper's {paper}; results may not match the paper without re-tuning the learning rate")
    log.warning(msg)
    return msg


def write_run_info(run_dir: str | Path, **fields) -> Path:
    """``run_info.json``: git revision, library versions and whatever the stage adds."""
    info = {"git_revision": git_revision(), "versions": library_versions(), **fields}
    path = Path(run_dir) / "run_info.json"
    atomic_write_text(path, json.dumps(info, indent=2, default=str))
    return path


def save_config(cfg, out) -> None:
    """The resolved config in ``out/.hydra/config.yaml`` (Hydra writes it itself for the top run)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from dasslab.utils.io import atomic_write_text

    path = Path(out) / ".hydra" / "config.yaml"
    if not path.exists():
        atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
