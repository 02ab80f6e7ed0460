"""Every file a run reads, checked before any work (the settings are checked first: :mod:`dasslab.checks.settings`).

* **Checkpoints**, wherever a run reads one -- ``segmenter.init_ckpt``, ``guide_ckpt``, ``diffusion_ckpt``,
  ``quality.judge_ckpt``, ``ptl.watch.judge_ckpt``, ``resume``, ``dasslab-eval ckpt=``, ``dasslab-predict
  ckpt=``, ``dasslab-translate`` -- are checked for their kind (segmenter / adaptation / diffusion), their
  architecture (``init_ckpt`` and ``resume``: the run's backbone, every weight's shape; a diffusion
  ``resume``: the run's preset and schedule), their classes against the data, finite weights, and a
  denoiser against the image sizes it will be given and the depths it must reach
  (:func:`dasslab.checkpoints.check_checkpoint`). ``backbone.weights``: finite weights.
* **Data**: the splits a fit stage trains on are pre-scanned by its datamodule before the first step;
  :func:`prescan_split` does the same for the commands that read a dataset without training
  (``dasslab-translate``, ``dasslab-eval``).

Each failure is one line naming the setting (or file) and what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasslab.checkpoints import SEGMENTERS, check_checkpoint, check_finite, denoiser_factor
from dasslab.errors import ConfigError, DataError

__all__ = ["check_eval_inputs", "check_run_files", "dataset_classes", "prescan_split"]

# setting -> (kinds, compare classes, compare architecture)
CHECKPOINT_SETTINGS = {
    "segmenter.init_ckpt": (SEGMENTERS, True, True),
    "guide_ckpt": (SEGMENTERS, True, False),
    "quality.judge_ckpt": (SEGMENTERS, True, False),
    "ptl.watch.judge_ckpt": (SEGMENTERS, True, False),
    "diffusion_ckpt": (("diffusion",), False, False),
}


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _ignored(cfg: DictConfig, key: str) -> bool:
    """``key`` (or a section above it) is in the stage's ``ignore`` or the pipeline job's: the run does not read it."""
    ignore = [*(cfg.stage.get("ignore") or []), *((cfg.get("pipeline") or {}).get("job_ignore") or [])]
    return any(key == i or key.startswith(f"{i}.") for i in ignore)


def dataset_classes(cfg: DictConfig, key: str) -> list[str]:
    """The class names of ``dataset.<key>`` (the dataset is listed, no pixel read)."""
    from dasslab.data.build import build_dataset

    return list(build_dataset(cfg.dataset, key, train=False).class_names)


def _classes_key(cfg: DictConfig) -> str:
    """The dataset entry whose classes a run's segmenter checkpoints must predict."""
    from dasslab.data.prescan import splits_for

    name = cfg.stage.name
    if name == "translate":
        return str(cfg.translate.split)
    if name == "quality":
        return str(cfg.quality.source_split)
    keys = [k for k in splits_for(cfg) if cfg.dataset.get(k) is not None]
    return keys[0] if keys else "source"


def _module_kind(cfg: DictConfig) -> str | None:
    """What a fit stage builds, hence what its ``resume`` checkpoint must be."""
    target = str((cfg.stage.get("module") or {}).get("_target_", ""))
    if target.endswith("build.diffusion"):
        return "diffusion"
    if target.startswith("dasslab.ptl."):
        return "adaptation"
    if target.endswith("build.segmenter"):
        return "segmenter"
    return None


def _diffusion_expected(cfg: DictConfig) -> dict:
    d = cfg.diffusion
    return {"preset": d.preset, "num_timesteps": int(d.num_timesteps), "beta_start": float(d.beta_start),
            "beta_end": float(d.beta_end), "unet_overrides": _plain(d.get("unet")) or None}


def _deepest(cfg: DictConfig) -> tuple[str, int] | None:
    """The deepest timestep the run translates from, and the setting that asks for it."""
    name = cfg.stage.name
    if name == "translate":
        t = cfg.translate
        depths = list(t.depths) if t.get("depths") else [t.depth]
        return "translate.depths" if t.get("depths") else "translate.depth", max(int(n) for n in depths)
    if name == "adapt":
        p = cfg.ptl
        if p.get("t_max") == "auto":     # the calibration probes up to its deepest candidate
            return "calibrate.probe_depths", max(int(d) for d in cfg.calibrate.probe_depths)
        return ("ptl.t_max", int(p.t_max)) if p.get("t_max") else ("ptl.N", int(p.N))
    if name == "quality":
        q = cfg.quality
        depths = [*list(q.get("depths") or []), *list(q.get("guided_depths") or [])]
        return ("quality.depths", max(int(n) for n in depths)) if depths else None
    return None


def _check_denoiser_fits(cfg: DictConfig, path, setting: str, summary) -> None:
    """A diffusion checkpoint's denoiser against the image sizes it will see and the depths it must reach."""
    hp = summary.hp
    try:
        factor = denoiser_factor(hp.get("preset"), hp.get("unet_overrides"))
    except (KeyError, TypeError):
        factor = 1
    key = "dataset.image_size" if cfg.stage.name in ("translate", "quality") else "dataset.crop_size"
    size = [int(s) for s in OmegaConf.select(cfg, key)]
    if any(s % factor for s in size):
        near = [max(factor, s // factor * factor) for s in size]
        raise ConfigError(f"{key}={size}: the denoiser of {setting}={path} takes sides that are multiples of {factor} "
                          f"(its U-Net halves them {int(math.log2(factor))} times); expected e.g. {near}")
    deepest = _deepest(cfg)
    T = hp.get("num_timesteps")
    if deepest is not None and isinstance(T, int) and deepest[1] > T:
        raise ConfigError(f"{deepest[0]}={deepest[1]}: deeper than the T={T} timesteps of {setting}={path}; "
                          f"expected at most {T}")


def _value_and_setting(cfg: DictConfig, key: str):
    """``dasslab-translate`` reads ``translate.diffusion_ckpt`` / ``translate.guide_ckpt`` (by default the root
    settings): the value it reads, named as the user set it."""
    value = OmegaConf.select(cfg, key, default=None)
    if cfg.stage.name == "translate" and key in ("diffusion_ckpt", "guide_ckpt"):
        inner = OmegaConf.select(cfg, f"translate.{key}", default=None)
        if inner != value:
            return inner, f"translate.{key}"
    return value, key


def _guided(cfg: DictConfig) -> bool:
    if cfg.get("guidance") is None:
        return False
    from dasslab.guidance.translation import guidance_enabled

    return bool(guidance_enabled(_plain(cfg.guidance)))


def check_run_files(cfg: DictConfig, skip=()) -> None:
    """Every checkpoint and weights file a ``dasslab-train`` / ``dasslab-translate`` run reads (see the module
    docstring), before any work. ``skip``: settings filled by upstream pipeline jobs (not written yet)."""
    classes: dict[str, list[str]] = {}

    def expected_classes() -> tuple[list[str], str]:
        key = _classes_key(cfg)
        if key not in classes:
            classes[key] = dataset_classes(cfg, key)
        return classes[key], f"dataset.{key} ({cfg.dataset.get('name')})"

    stage = cfg.stage.name
    for key, (kinds, with_classes, with_arch) in CHECKPOINT_SETTINGS.items():
        value, setting = _value_and_setting(cfg, key)
        if not value or key in skip or setting in skip or _ignored(cfg, key):
            continue
        if key == "guide_ckpt" and stage == "translate" and not _guided(cfg):
            continue                     # unguided translation reads no guide
        if key == "diffusion_ckpt" and stage == "adapt" and cfg.ptl.get("name") in ("none", "ceiling", "ceiling_m"):
            continue                     # these controls translate nothing
        if key == "segmenter.init_ckpt" and stage != "adapt" and "init_ckpt" not in (cfg.stage.get("module") or {}):
            continue                     # e.g. the oracle starts from scratch
        names, of = expected_classes() if with_classes else (None, "")
        summary = check_checkpoint(value, setting, kinds, class_names=names, classes_of=of,
                                   backbone=_plain(cfg.backbone) if with_arch else None)
        if key == "diffusion_ckpt":
            _check_denoiser_fits(cfg, value, setting, summary)
    if stage == "translate" and _guided(cfg) and not _value_and_setting(cfg, "guide_ckpt")[0]:
        from dasslab.guidance import validate_guidance

        raise ConfigError(f"guidance={validate_guidance(cfg.guidance).mode} needs guide_ckpt=PATH (a segmenter "
                          f"checkpoint, e.g. the source model's …/checkpoints/last.ckpt)")
    _check_resume(cfg, expected_classes)
    _check_backbone_weights(cfg, expected_classes)


def _check_resume(cfg: DictConfig, expected_classes) -> None:
    resume = cfg.get("resume")
    if resume in (None, False, "none") or cfg.stage.kind != "fit":
        return
    if resume == "auto":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return
    else:
        path = Path(str(resume)).expanduser()
        if not path.is_file():
            raise ConfigError(f"resume={resume}: checkpoint not found (expected a path or 'auto')")
    kind = _module_kind(cfg)
    if kind is None:
        return
    if kind == "diffusion":
        check_checkpoint(path, "resume", ("diffusion",), diffusion=_diffusion_expected(cfg))
    else:
        names, of = expected_classes()
        check_checkpoint(path, "resume", (kind,), class_names=names, classes_of=of, backbone=_plain(cfg.backbone))


def _check_backbone_weights(cfg: DictConfig, expected_classes) -> None:
    """``backbone.weights``: finite, and every tensor that goes into the segmenter of the right dtype (matched
    against the segmenter built on the meta device: no memory, nothing loaded)."""
    weights = OmegaConf.select(cfg, "backbone.weights", default=None)
    if not weights or _ignored(cfg, "backbone") or _module_kind(cfg) != "segmenter":
        return
    import torch

    from dasslab.segmentation import build_segmenter
    from dasslab.segmentation.weights import match_weights, read_state_dict

    state = read_state_dict(weights)
    check_finite(state, weights, "backbone.weights")
    b = _plain(cfg.backbone)
    try:
        with torch.device("meta"):
            model = build_segmenter(str(b["name"]), len(expected_classes()[0]), pretrained=False, weights=None,
                                    freeze_bn=b.get("freeze_bn"), **dict(b.get("options") or {}))
    except (TypeError, ValueError):      # options the builder refuses: named when the run builds it
        return
    match_weights(model, state, str(weights))


# --------------------------------------------------------------------------- data read without training
def prescan_split(cfg: DictConfig, ds, key: str) -> None:
    """Pre-scan one built split (``data.prescan``, default full) before a command reads it."""
    import logging

    from dasslab.data.formats import set_max_pixels
    from dasslab.data.prescan import scan_datasets

    set_max_pixels((cfg.get("data") or {}).get("max_pixels"))      # also for the loaders that read it next
    mode = (cfg.get("data") or {}).get("prescan") or "full"
    report = scan_datasets({key: ds}, mode, cfg.dataset.get("num_classes"))
    if report.splits:
        logging.getLogger("dasslab").info(report.summary())


def check_eval_inputs(cfg: DictConfig):
    """``dasslab-eval``: the split (labelled, pre-scanned) and the checkpoint (kind, classes, finite weights);
    returns the built split."""
    from dasslab.data.build import build_dataset

    split = str(cfg.eval.split)
    ds = build_dataset(cfg.dataset, split, train=False, limit=(cfg.get("data") or {}).get("limit_val"))
    if not any(label is not None for _, label in ds.samples):
        raise DataError(f"eval.split={split}: dataset.{split} has no labels; expected a labelled split "
                        f"(target_val, source_val, target_train_labeled, source)")
    check_checkpoint(cfg.ckpt, "ckpt", SEGMENTERS, class_names=list(ds.class_names),
                     classes_of=f"dataset.{split} ({cfg.dataset.get('name')})")
    prescan_split(cfg, ds, split)
    return ds
