"""Loading the trained artefacts a run hands to the next, without running code from the file.

``load_segmenter`` reads a ``stage=source|oracle|adapt|ptl`` checkpoint (or any checkpoint
of a :class:`~dasslab.lit.segmenter_module.SegmenterModule`), ``load_diffusion`` a
``stage=diffusion`` checkpoint with its EMA weights. Both also read the ``.safetensors``
files written by ``dasslab-export-weights`` (:mod:`dasslab.export.weights`).

Safety: every file is read through :mod:`dasslab.utils.safe_load` (``torch.load(weights_only=True)``
or safetensors; ``trust_checkpoint=true`` to opt in for a file you trust).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dasslab.checks.tensors import FLOAT_DTYPES, cast_to, check_tensors, spec
from dasslab.errors import CheckpointError, UnsafeCheckpointError
from dasslab.utils.paths import real_path
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
    "KINDS",
    "CheckpointError",
    "CheckpointSummary",
    "UnsafeCheckpointError",
    "check_architecture",
    "check_checkpoint",
    "check_finite",
    "checkpoint_kind",
    "checkpoint_trusted",
    "denoiser_factor",
    "load_diffusion",
    "load_segmenter",
    "read_checkpoint",
    "safe_torch_load",
    "summarize_checkpoint",
    "trust_checkpoints",
]

# --------------------------------------------------------------------------- what a checkpoint is
KINDS = ("segmenter", "adaptation", "diffusion")
SEGMENTERS = ("segmenter", "adaptation")       # an adaptation checkpoint holds a segmenter (under model.)
_FOUND = {"segmenter": "a segmenter checkpoint (stage=source|oracle|judge)",
          "adaptation": "an adaptation checkpoint (stage=adapt)",
          "diffusion": "a diffusion checkpoint (stage=diffusion)",
          None: "not a dasslab checkpoint (no hyper-parameters naming a segmenter or a diffusion model)"}
_EXPECTED = {("segmenter", "adaptation"): "a segmenter checkpoint (…/checkpoints/last.ckpt of a `dasslab-train "
                                          "stage=source|oracle|adapt` run, or its .safetensors export)",
             ("segmenter",): "a checkpoint of a stage=source|oracle|judge run (resume continues the same kind of run)",
             ("adaptation",): "a checkpoint of a stage=adapt run (resume continues the same kind of run)",
             ("diffusion",): "a diffusion checkpoint (…/checkpoints/last.ckpt of a `dasslab-train stage=diffusion` "
                             "run, or its .safetensors export)"}


def checkpoint_kind(ckpt: dict) -> str | None:
    """``segmenter`` | ``adaptation`` | ``diffusion`` from a checkpoint's hyper-parameters (None: not ours)."""
    hp = ckpt.get("hyper_parameters") or {}
    if "preset" in hp:
        return "diffusion"
    if "backbone" in hp and "class_names" in hp:
        return "adaptation" if "ptl" in hp else "segmenter"
    kind = (ckpt.get("dasslab") or {}).get("kind")
    return kind if kind in KINDS else None


def _nonfinite(state) -> tuple[list[str], int]:
    """Names of the floating-point tensors of ``state`` holding a NaN or an infinity, and how many were checked."""
    import torch

    bad, n = [], 0
    for name, t in (state or {}).items():   # other dtypes (int32, float8 …) are refused by the dtype check
        if isinstance(t, torch.Tensor) and (t.dtype in FLOAT_DTYPES or t.dtype == torch.float64):
            n += 1
            if not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad, n


def _identity(path) -> tuple | None:
    try:
        p = real_path(path)
        st = os.stat(p)
        return p, st.st_size, st.st_mtime_ns
    except OSError:
        return None


_FINITE_OK: set = set()   # files whose weights were found finite in this process (by path, size, mtime)


def check_finite(state: dict, path, setting: str) -> None:
    """:class:`CheckpointError` naming the file when a weight is NaN or infinite (a diverged run)."""
    ident = _identity(path)
    if ident is not None and ident in _FINITE_OK:
        return
    bad, n = _nonfinite(state)
    if bad:
        more = f" and {len(bad) - 1} more of {n} tensors" if len(bad) > 1 else f" (1 of {n} tensors)"
        raise CheckpointError(f"{setting}={path}: non-finite weights (NaN or inf in {bad[0]}{more}); expected "
                              f"finite numbers (the run that wrote it diverged?)")
    if ident is not None:
        _FINITE_OK.add(ident)


class CheckpointSummary:
    """What :func:`summarize_checkpoint` learnt of a file: its kind, hyper-parameters and weights' shapes and dtypes
    (``spec``: name -> (shape, dtype))."""

    def __init__(self, kind, hp: dict, spec: dict, nonfinite: list[str], tensors: int, has_state: bool):
        self.kind, self.hp, self.spec = kind, hp, spec
        self.shapes = {k: shape for k, (shape, _) in spec.items()}
        self.nonfinite, self.tensors, self.has_state = nonfinite, tensors, has_state

    @property
    def class_names(self) -> list[str] | None:
        names = self.hp.get("class_names")
        return list(names) if names is not None else None

    @property
    def backbone(self) -> dict:
        return dict(self.hp.get("backbone") or {})


_SUMMARIES: dict[tuple, CheckpointSummary] = {}


def summarize_checkpoint(path, setting: str, trust: bool | None = None) -> CheckpointSummary:
    """Read ``path`` once (safely, tensors memory-mapped) and summarise it; memoised by path, size and mtime."""
    ident = _identity(path)
    if ident is not None and ident in _SUMMARIES:
        return _SUMMARIES[ident]
    ckpt = read_checkpoint(path, setting, trust=trust, mmap=True)
    state = ckpt.get("state_dict")
    state = state if isinstance(state, dict) else {}
    bad, n = _nonfinite(state)
    summary = CheckpointSummary(checkpoint_kind(ckpt), dict(ckpt.get("hyper_parameters") or {}), spec(state), bad, n,
                                "state_dict" in ckpt)
    if ident is not None:
        _SUMMARIES[ident] = summary
        if not bad:
            _FINITE_OK.add(ident)
    return summary


def _segmenter_spec(backbone: dict, num_classes: int) -> dict | None:
    """``model.<name>`` -> (shape, dtype) of the segmenter ``backbone`` describes (built on the meta device: no
    memory)."""
    import torch

    from dasslab.segmentation import build_segmenter

    try:
        with torch.device("meta"):
            model = build_segmenter(str(backbone["name"]), int(num_classes), pretrained=False, weights=None,
                                    freeze_bn=backbone.get("freeze_bn"), **dict(backbone.get("options") or {}))
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: its name was compared already
        return None
    return {f"model.{k}": v for k, v in spec(model.state_dict()).items()}


def _denoiser_spec(hp: dict) -> dict | None:
    """``denoiser.<name>`` -> (shape, dtype) of the denoiser a diffusion checkpoint's hyper-parameters describe."""
    import torch

    from dasslab.diffusion.unet import Denoiser

    try:
        with torch.device("meta"):
            model = Denoiser.build(tuple(hp["image_size"]), int(hp.get("in_channels", 3)), str(hp["preset"]),
                                   **dict(hp.get("unet_overrides") or {}))
    except Exception:  # noqa: BLE001 - hyper-parameters that build nothing: the loader names the problem
        return None
    return {f"denoiser.{k}": v for k, v in spec(model.state_dict()).items()}


def _architecture(s: CheckpointSummary, backbone: dict | None, class_names) -> tuple[dict | None, str]:
    """What the file's tensors must fit -- the run's backbone when given, else the model the file's own
    hyper-parameters describe -- and how to name it."""
    if s.kind == "diffusion":
        return _denoiser_spec(s.hp), f"the {s.hp.get('preset')} denoiser its hyper-parameters describe"
    arch = backbone if backbone is not None else s.backbone
    if not arch.get("name"):
        return None, ""
    n = len(class_names) if class_names is not None else len(s.class_names or []) or 1
    whose = "the run's backbone describes" if backbone is not None else "its hyper-parameters describe"
    return _segmenter_spec(arch, n), f"the {arch.get('name')} segmenter {whose}"


def denoiser_factor(preset: str, unet_overrides: dict | None = None) -> int:
    """Image sides a denoiser of ``preset`` takes are multiples of this (``2 ** (levels - 1)``)."""
    from dasslab.diffusion.unet import PRESETS

    channels = (unet_overrides or {}).get("block_out_channels") or PRESETS[preset]["block_out_channels"]
    return 2 ** (len(channels) - 1)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names[:4]) + (", …" if len(names) > 4 else "")


def check_checkpoint(path, setting: str, kinds=SEGMENTERS, *, class_names=None, classes_of: str = "the dataset",
                     backbone: dict | None = None, diffusion: dict | None = None,
                     trust: bool | None = None) -> CheckpointSummary:
    """Check the checkpoint a run is about to read, before any work: one :class:`CheckpointError` line naming
    ``setting`` and the file if it is not of one of ``kinds``, holds non-finite weights, predicts other
    classes than ``class_names``, is another architecture than ``backbone`` (the run's ``backbone`` config:
    name, then every weight's shape) or, for a diffusion checkpoint, another model than ``diffusion``
    (``preset``, ``num_timesteps``, ``beta_start``, ``beta_end``, ``unet_overrides``)."""
    kinds = tuple(kinds)
    s = summarize_checkpoint(path, setting, trust)
    if s.kind not in kinds or not s.has_state:
        if s.kind is None:
            noun = "segmenter" if set(kinds) & set(SEGMENTERS) else "diffusion"
            found = f"not a {noun} checkpoint (its hyper-parameters name no dasslab model)"
        else:
            found = _FOUND[s.kind] if s.has_state else f"{_FOUND[s.kind]} without weights"
        raise CheckpointError(f"{setting}={path}: {found}; expected {_EXPECTED.get(kinds, ' or '.join(kinds))}")
    if s.nonfinite:
        bad = s.nonfinite
        more = f" and {len(bad) - 1} more of {s.tensors} tensors" if len(bad) > 1 else f" (1 of {s.tensors} tensors)"
        raise CheckpointError(f"{setting}={path}: non-finite weights (NaN or inf in {bad[0]}{more}); expected "
                              f"finite numbers (the run that wrote it diverged?)")
    if s.kind in SEGMENTERS and backbone is not None:
        have, want = s.backbone.get("name"), backbone.get("name")
        if have != want:
            raise CheckpointError(f"{setting}={path}: a {have} segmenter; expected backbone={want} (the run's "
                                  f"backbone: weights of one architecture cannot initialise another)")
    if s.kind in SEGMENTERS and class_names is not None and s.class_names != list(class_names):
        names = s.class_names or []
        raise CheckpointError(f"{setting}={path}: {len(names)} classes ({_names(names)}); expected {classes_of}'s "
                              f"{len(list(class_names))} classes ({_names(class_names)})")
    arch, arch_name = _architecture(s, backbone, class_names)
    if s.kind in SEGMENTERS and backbone is not None:   # the run's own backbone: every layer it has
        for key, (shape, _) in (arch or {}).items():
            have = s.shapes.get(key)
            if have != shape:
                what = "no such weight" if have is None else f"shape {list(have)}"
                raise CheckpointError(f"{setting}={path}: its {backbone.get('name')} segmenter has other layers than "
                                      f"backbone.options describes ({key}: {what} there, {list(shape)} expected)")
    if s.kind == "diffusion" and diffusion is not None:
        for key, want in diffusion.items():
            have = s.hp.get(key)
            if key == "unet_overrides":
                have, want = have or None, want or None
            if have != want and not (isinstance(have, float) and isinstance(want, float) and abs(have - want) < 1e-12):
                raise CheckpointError(f"{setting}={path}: a diffusion model with {key}={have!r}; expected the run's "
                                      f"{'diffusion.unet' if key == 'unet_overrides' else 'diffusion.' + key}="
                                      f"{want!r}")
    check_tensors(s.spec, arch or {}, path, setting, arch_name)   # every tensor's dtype and shape
    return s


def check_architecture(path, setting: str, trust: bool | None = None) -> CheckpointSummary:
    """Every tensor of a segmenter or diffusion checkpoint against the model its own hyper-parameters describe
    (dtype and shape, :mod:`dasslab.checks.tensors`); finiteness and kind are :func:`check_checkpoint`'s."""
    s = summarize_checkpoint(path, setting, trust)
    if s.kind is not None:
        want, what = _architecture(s, None, None)
        check_tensors(s.spec, want or {}, path, setting, what)
    return s


def _load_state(module, state: dict, path, setting: str, strict: bool) -> None:
    """``module.load_state_dict`` after every tensor's dtype and shape is checked against ``module``
    (:mod:`dasslab.checks.tensors`; float64 is cast), with a one-line error (e.g. a checkpoint of an older model
    version)."""
    want = spec(module.state_dict())
    cast = check_tensors(spec(state), want, path, setting, f"the {type(module).__name__} its hyper-parameters "
                                                           f"describe")
    state = cast_to(state, want, cast, path, setting)
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
        found = _FOUND[checkpoint_kind(ckpt)]
        raise CheckpointError(f"{setting}={path}: {found}; expected {kind} checkpoint (…/checkpoints/last.ckpt "
                              f"of a `dasslab-train {stage}` run)")
    check_finite(ckpt["state_dict"], path, setting)
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
