"""The adaptation stage's settings: their names and their checks (one line each, at config time).

Their defaults live in one place, the config files (conf/ptl/progressive.yaml, conf/adapt/default.yaml);
the code reads the settings it is given and never fills in a second default.

``ptl.*`` (the PTL group, conf/ptl/), ``ptl.watch.*``, ``adapt.loss``, ``adapt.self_training.*`` and
the files the stage reads (the source model, guide and judge checkpoints, the diffusion model).
"""

from __future__ import annotations

import math

from dasslab.errors import ConfigError
from dasslab.ptl.schedule import LR_SCHEDULES, MODES

__all__ = ["MIX_SOURCES", "PTL_KEYS", "SELF_TRAINING_KEYS", "WATCH_KEYS", "self_training_settings", "validate_shared",
           "validate_ptl", "validate_self_training", "check_ptl_files"]

TARGET_LABELED = "target_train_labeled"   # the dataset entry (and batch key) of ptl=ceiling's images
TARGET = "target"                          # the unlabeled target-train images (and batch key) of self-training
PTL_KEYS = ("name", "N", "K", "t_max", "max_steps", "pool_size", "pool_batch", "val_every_domains", "lr_schedule",
            "watch")                 # conf/ptl/progressive.yaml's settings (grid_every_domains: the stage's grid)
WATCH_KEYS = ("judge_ckpt", "domain_score", "images", "classifier_steps", "classifier_images")
SELF_TRAINING_KEYS = ("enabled", "ema", "threshold", "mix", "weight", "jitter", "p_jitter", "blur")
MIX_SOURCES = ("auto", "source", "translated")


def self_training_settings(adapt) -> dict:
    """The ``adapt`` section's ``self_training`` settings (``{"enabled": False}`` where there is no such section)."""
    from dasslab.lit.build import plain

    section = (adapt or {}).get("self_training")
    return plain(section) if section is not None else {"enabled": False}


def missing_keys(given, keys) -> list[str]:
    """The names of ``keys`` that ``given`` lacks (a section of the config must hold every one of its settings)."""
    return [k for k in keys if k not in (given or {})]


def _checkpoint_classes(path: str, setting: str) -> list[str]:
    from dasslab.checkpoints import read_checkpoint
    from dasslab.errors import CheckpointError

    hp = read_checkpoint(path, setting).get("hyper_parameters", {})
    if "class_names" not in hp:
        raise CheckpointError(f"{setting}={path}: not a segmenter checkpoint (no class names)")
    return list(hp["class_names"])


def _integer(key, value, lo=1, hi=None, null=False):
    if value is None and null:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{key}={value!r}: expected an integer {rng}{' or null' if null else ''}")


def validate_shared(cfg) -> None:
    """The adaptation settings every stage reads: ptl.N and ptl.t_max against the DDPM's T (translate.depth is ptl.N),
    adapt.loss (checked for every stage, as the pipeline's jobs share it)."""
    loss = cfg.adapt.get("loss")
    if loss not in ("ada_src", "ada"):
        raise ConfigError(f"adapt.loss={loss!r}: expected 'ada_src' (Eq. 12) or 'ada' (Table 3 (a))")
    p, T = cfg.ptl, int(cfg.diffusion.num_timesteps)
    _integer("ptl.N", p.N)
    if p.get("t_max") != "auto":     # auto: chosen per pair by the calibration (translate.calibrate)
        _integer("ptl.t_max", p.get("t_max"), 1, T, null=True)
    if p.get("t_max") is None and p.N > T:
        raise ConfigError(f"ptl.N={p.N} exceeds diffusion.num_timesteps={T}; set ptl.t_max <= {T} to stride "
                          f"the domains")


def validate_ptl(cfg, check_files: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for the first bad adaptation setting.

    Settings: ptl.name/N/K/t_max/max_steps/pool_size/pool_batch/val_every_domains/lr_schedule/watch,
    translate.num_steps, adapt.loss, the labelled target-train split of ptl=ceiling; with
    ``check_files``: the source set size (pool), the classes of segmenter.init_ckpt, guide_ckpt and
    ptl.watch.judge_ckpt against the dataset's, and the diffusion checkpoint against the crop size."""
    p = cfg.ptl
    integer = _integer
    if p.get("name") not in MODES:
        raise ConfigError(f"ptl.name={p.get('name')!r}: expected one of {', '.join(MODES)} (ptl=<name>)")
    missing = missing_keys(p, PTL_KEYS) or [f"watch.{k}" for k in missing_keys(p.watch, WATCH_KEYS)]
    if missing:
        raise ConfigError(f"ptl.{missing[0]}: missing; expected every setting of conf/ptl/progressive.yaml "
                          f"(which every ptl option extends)")
    integer("ptl.K", p.K)
    validate_shared(cfg)
    integer("ptl.max_steps", p.get("max_steps"), null=True)
    integer("ptl.pool_size", p.get("pool_size"), null=True)
    integer("ptl.pool_batch", p.pool_batch)
    integer("ptl.val_every_domains", p.val_every_domains, lo=0)
    lr = p.lr_schedule
    if lr not in LR_SCHEDULES:
        raise ConfigError(f"ptl.lr_schedule={lr!r}: expected one of {', '.join(LR_SCHEDULES)}")
    watch = p.watch
    integer("ptl.watch.images", watch["images"], lo=0)
    integer("ptl.watch.classifier_steps", watch["classifier_steps"])
    integer("ptl.watch.classifier_images", watch["classifier_images"])
    if not isinstance(watch["domain_score"], bool):
        raise ConfigError(f"ptl.watch.domain_score={watch['domain_score']!r}: expected true or false")
    if p.name in ("ceiling", "ceiling_m") and cfg.dataset.get(TARGET_LABELED) is None:
        raise ConfigError(f"ptl.name={p.name}: dataset={cfg.dataset.get('name')} has no labelled target-train split "
                          f"(dataset.{TARGET_LABELED}); the ceiling trains on target labels")
    integer("translate.num_steps", cfg.translate.get("num_steps"), null=True)
    loss = cfg.adapt.get("loss")
    if p.name == "none" and loss == "ada":
        raise ConfigError("adapt.loss=ada with ptl=none: nothing is translated, L_ada is empty; use adapt.loss=ada_src")
    validate_self_training(cfg)
    if p.name in ("progressive", "direct"):    # translation settings: auto only under translate.calibrate=auto
        from dasslab.calibration import TranslationSettings

        TranslationSettings.of(p, cfg.translate, cfg.get("guidance"), int(cfg.diffusion.num_timesteps))
    if check_files:
        check_ptl_files(cfg)


def check_ptl_files(cfg) -> None:
    """The files the adaptation reads, against its settings (checked first by :func:`validate_ptl`): the source
    set size (pool), the classes of segmenter.init_ckpt, guide_ckpt and ptl.watch.judge_ckpt against the
    dataset's, and the diffusion checkpoint against the crop size and the deepest domain."""
    from omegaconf import OmegaConf

    from dasslab.data.datamodule import build_dataset

    p = cfg.ptl

    source = build_dataset(cfg.dataset, "source", train=True, limit=cfg.data.get("limit_train"))
    if p.get("pool_size") and p.name not in ("none", "ceiling", "ceiling_m") and p.pool_size > len(source):
        raise ConfigError(f"ptl.pool_size={p.pool_size} is larger than the source set ({len(source)} images)")
    names = list(source.class_names)
    for key in ("segmenter.init_ckpt", "guide_ckpt", "ptl.watch.judge_ckpt"):
        path = OmegaConf.select(cfg, key, default=None)
        if key == "segmenter.init_ckpt" and not path:
            raise ConfigError("segmenter.init_ckpt is not set; stage=adapt starts from the source-only model")
        if path and _checkpoint_classes(path, key) != names:
            raise ConfigError(f"{key}={path}: its classes differ from dataset={cfg.dataset.name}'s {len(names)} "
                              f"classes ({', '.join(names[:4])}, …)")
    if p.name in ("none", "ceiling", "ceiling_m"):  # nothing is translated: no diffusion model
        return
    if not cfg.get("diffusion_ckpt"):
        raise ConfigError("diffusion_ckpt is not set; ptl=progressive|direct translates with the target DDPM")
    from dasslab.checkpoints import load_diffusion

    diffusion = load_diffusion(cfg.diffusion_ckpt, setting="diffusion_ckpt")
    crop = list(cfg.dataset.crop_size)
    try:
        diffusion.check_data((1, 3, *crop), f"dataset.crop_size={crop}")
    except ValueError as e:
        raise ConfigError(f"diffusion_ckpt={cfg.diffusion_ckpt}: {e}") from None
    deepest = max(int(d) for d in cfg.calibrate.probe_depths) if p.get("t_max") == "auto" else (p.get("t_max") or p.N)
    if int(diffusion.hparams.num_timesteps) < deepest:
        raise ConfigError(f"diffusion_ckpt={cfg.diffusion_ckpt}: T={diffusion.hparams.num_timesteps} timesteps, "
                          f"fewer than the deepest domain needs ({deepest})")



def validate_self_training(cfg) -> None:
    """One line for the first bad ``adapt.self_training`` setting (and a dataset without target images)."""
    raw = (cfg.get("adapt") or {}).get("self_training")
    if raw is None:          # no such section: off
        return
    unknown = sorted(set(raw) - set(SELF_TRAINING_KEYS))
    if unknown:
        raise ConfigError(f"adapt.self_training.{unknown[0]}: unknown setting; expected one of "
                          f"{', '.join(SELF_TRAINING_KEYS)}")
    missing = missing_keys(raw, SELF_TRAINING_KEYS)
    if missing:
        raise ConfigError(f"adapt.self_training.{missing[0]}: missing; expected every setting of "
                          f"conf/adapt/default.yaml's self_training ({', '.join(SELF_TRAINING_KEYS)})")
    s = self_training_settings(cfg.get("adapt"))

    def number(key, lo, hi, lo_open=False, hi_open=False):
        v = s[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            right = ")" if hi_open or hi is None else "]"
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{right}"
            raise ConfigError(f"adapt.self_training.{key}={v!r}: expected a number in {rng}")

    for key in ("enabled", "blur"):
        if not isinstance(s[key], bool):
            raise ConfigError(f"adapt.self_training.{key}={s[key]!r}: expected true or false")
    number("ema", 0, 1, hi_open=True)
    number("threshold", 0, 1)
    number("weight", 0, None)
    number("jitter", 0, 1)
    number("p_jitter", 0, 1)
    if s["mix"] not in MIX_SOURCES:
        raise ConfigError(f"adapt.self_training.mix={s['mix']!r}: expected one of {', '.join(MIX_SOURCES)}")
    if not s["enabled"]:
        return
    if s["mix"] == "translated" and cfg.ptl.name not in ("progressive", "direct", "ceiling", "ceiling_m"):
        raise ConfigError(f"adapt.self_training.mix=translated with ptl={cfg.ptl.name}: nothing is translated; "
                          "use mix=source or auto")
    if cfg.dataset.get(TARGET) is None:
        raise ConfigError(f"adapt.self_training.enabled=true: dataset={cfg.dataset.get('name')} has no target-train "
                          f"images (dataset.{TARGET}); self-training learns from them")
