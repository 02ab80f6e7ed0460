"""Loading the trained artefacts a run hands to the next, without running code from the file.

``load_segmenter`` reads a ``stage=source|oracle|adapt|ptl`` checkpoint (or any checkpoint
of a :class:`~dasslab.lit.segmenter_module.SegmenterModule`), ``load_diffusion`` a
``stage=diffusion`` checkpoint with its EMA weights. Both also read the ``.safetensors``
files written by ``dasslab-export-weights`` (:mod:`dasslab.export_weights`).

Safety: every file is read through :mod:`dasslab.utils.safe_load` (``torch.load(weights_only=True)``
or safetensors; ``trust_checkpoint=true`` to opt in for a file you trust).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dasslab.errors import CheckpointError, UnsafeCheckpointError
from dasslab.utils.safe_load import (  # noqa: F401  (re-exported: the project's loaders live here)
    META_KEY,
    SAFETENSORS_SUFFIX,
    TRUST_SETTING,
    _one_line,
    _read_safetensors,
    _unsafe_globals,
    checkpoint_trusted,
    read_checkpoint,
    safe_torch_load,
    trust_checkpoints,
    unsafe_message,
)

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "checkpoint_trusted",
    "load_diffusion",
    "load_segmenter",
    "read_checkpoint",
    "safe_torch_load",
    "trust_checkpoints",
]


def _load_state(module, state: dict, path, setting: str, strict: bool) -> None:
    """``module.load_state_dict`` with a one-line error (e.g. a checkpoint of an older model version)."""
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = " ".join(str(e).split("\n", 1)[-1].split())[:300]
        raise CheckpointError(f"{setting}={path}: the weights do not fit the {type(module).__name__} its "
                              f"hyper-parameters describe ({detail})") from None


def _read_kind(path, setting: str, map_location, trust, key: str, kind: str, stage: str) -> tuple[dict, dict]:
    """The checkpoint and its hyper-parameters; one line naming the file if it is not of this kind."""
    ckpt = read_checkpoint(path, setting, map_location, trust=trust)
    hp = dict(ckpt.get("hyper_parameters", {}))
    if key not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{setting}={path}: not {kind} checkpoint (expected …/checkpoints/last.ckpt "
                              f"of a `dasslab-train {stage}` run)")
    return ckpt, hp


def _build(cls, hp: dict):
    """``cls(**hp)`` with the hyper-parameters its constructor takes (older/newer extras ignored)."""
    known = cls.__init__.__code__.co_varnames
    return cls(**{k: v for k, v in hp.items() if k in known})


def load_segmenter(path: str | Path, map_location="cpu", setting: str = "segmenter checkpoint",
                   trust: bool | None = None):
    """A trained segmenter (``stage=source|oracle|adapt`` checkpoint, or its export) in eval mode."""
    from dasslab.lit.segmenter_module import SegmenterModule

    ckpt, hp = _read_kind(path, setting, map_location, trust, "backbone", "a segmenter",
                          "stage=source|oracle|adapt")
    # the checkpoint holds all weights: build without fetching ImageNet weights or reading local files
    hp["backbone"] = {**hp["backbone"], "pretrained": False, "weights": None}
    hp.setdefault("optim", {})
    hp.setdefault("max_steps", 0)
    module = _build(SegmenterModule, hp)
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("model.", "val_metric.", "schedule."))}
    _load_state(module, state, path, setting, strict=False)
    missing = [k for k in module.model.state_dict() if f"model.{k}" not in state]
    if missing:
        raise CheckpointError(f"{setting}={path}: segmenter weights incomplete ({len(missing)} tensors missing, "
                              f"e.g. {missing[0]})")
    return module.eval()


def load_diffusion(path: str | Path, map_location="cpu", setting: str = "diffusion_ckpt",
                   trust: bool | None = None):
    """A ``stage=diffusion`` checkpoint (EMA weights), or its export, for sampling/translation, frozen."""
    from dasslab.lit.diffusion_module import DiffusionModule

    ckpt, hp = _read_kind(path, setting, map_location, trust, "preset", "a diffusion", "stage=diffusion")
    module = _build(DiffusionModule, hp)
    _load_state(module, ckpt["state_dict"], path, setting, strict=True)
    module.eval().requires_grad_(False)
    return module
