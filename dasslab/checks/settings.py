"""Every setting checked once, at config time, before any work: one line naming the setting, its value
and what is expected (:class:`~dasslab.errors.ConfigError`).

* :func:`validate_config` -- ``dasslab-train`` (every stage; a pipeline's jobs too) and ``dasslab-translate``:
  types, ranges and finiteness of every numeric setting (learning rates, weight decay, momentum, batch
  sizes, steps, seeds, image sizes, fractions), every choice (optimizers, inference modes, splits,
  schedules, presets, precisions), image sizes against what the networks take, the guidance and PTL
  groups; then (``check_files``) every file the run reads (:mod:`dasslab.checks.files`: checkpoints by
  kind, architecture, classes and finite weights).
* :func:`validate_eval` -- ``dasslab-eval``; :func:`validate_predict` -- ``dasslab-predict``.

A value is checked as it is: ``nan``, ``inf``, ``2.5`` for a count, ``"abc"`` for a number, ``maybe``
for a switch are each refused (NaN passes every ``<`` test, so ranges alone never catch it).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from dasslab.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here too)

_MISSING = object()

SPLIT_KEYS = ("source", "source_val", "target", "target_train_labeled", "target_val")
TRANSLATE_SPLITS = ("source", "target", "target_val")
INFERENCE_MODES = ("whole", "slide")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("64", "32", "16", "bf16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
AUTOCAST = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32", "none")
PRESCAN = ("full", "headers", "off")
PREDICT_OUTPUTS = ("labels", "color", "overlay")   # dasslab.export.predictions.KINDS
SEED_MAX = 2 ** 32 - 1


# --------------------------------------------------------------------------- the command line
def check_overrides_resolve(cfg: DictConfig, overrides) -> None:
    """Every ``key=…${…}…`` given on the command line resolves: else one line naming the override as typed
    (``dataset.root=${oops}``), before anything reads the config. Errors of our own resolvers pass as they are."""
    from omegaconf.errors import OmegaConfBaseException

    for override in overrides or ():
        key, sep, value = str(override).lstrip("+~").partition("=")
        if not sep or "${" not in value:
            continue
        try:
            node = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ConfigError(f"{key}={value}: cannot be resolved ({reason}); expected a value, or ${{…}} naming an "
                              f"existing setting (e.g. ${{paths.data_dir}}/…)") from None


# --------------------------------------------------------------------------- one value
def _get(cfg, key: str):
    """The value at ``key`` as plain Python (lists, dicts), or ``_MISSING`` when the config has no such key."""
    value = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
    if value is _MISSING:
        return _MISSING
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _range_words(integer: bool, lo, hi, lo_open: bool, hi_open: bool) -> str:
    noun = "an integer" if integer else ("a finite number" if hi is None else "a number")
    if lo is not None and hi is not None:
        if integer:
            return f"{noun} in {lo}..{hi}"
        return f"{noun} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{noun} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{noun} {'<' if hi_open else '<='} {hi}"
    return noun


def check_number(value, key: str, *, integer: bool = False, lo=None, hi=None, lo_open: bool = False,
                 hi_open: bool = False, null: bool = False, extra: tuple = ()) -> None:
    """A finite number (``integer``: an int) within the bounds; ``null``: None allowed; ``extra``: other values."""
    if value is _MISSING or (value is None and null) or (extra and value in extra):
        return
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else _is_number(value)
    if ok and not integer and not math.isfinite(value):
        ok = False
    if ok:
        ok = not ((lo is not None and (value < lo or (lo_open and value == lo)))
                  or (hi is not None and (value > hi or (hi_open and value == hi))))
    if not ok:
        words = _range_words(integer, lo, hi, lo_open, hi_open)
        alts = "".join(f" or {e!r}" if isinstance(e, str) else f" or {e}" for e in extra)
        raise ConfigError(f"{key}={value!r}: expected {words}{alts}{' or null' if null else ''}")


def check_bool(value, key: str, null: bool = False, extra: tuple = ()) -> None:
    if value is _MISSING or isinstance(value, bool) or (value is None and null) or (extra and value in extra):
        return
    alts = "".join(f", {e!r}" for e in extra)
    raise ConfigError(f"{key}={value!r}: expected true or false{alts}{' or null' if null else ''}")


def check_choice(value, key: str, choices, null: bool = False) -> None:
    if value is _MISSING or (value is None and null) or (isinstance(value, str | int) and value in choices):
        return
    raise ConfigError(f"{key}={value!r}: expected one of {', '.join(map(str, choices))}{' or null' if null else ''}")


def check_pair(value, key: str, null: bool = False, what: str = "[height, width]") -> list[int] | None:
    """Two positive integers (an int n means [n, n])."""
    if value is _MISSING or (value is None and null):
        return None
    vals = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(vals, list | tuple) and len(vals) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals)):
        raise ConfigError(f"{key}={value!r}: expected {what}, two positive integers{' or null' if null else ''}")
    return [int(v) for v in vals]


def check_path(value, key: str, null: bool = True) -> None:
    """A path setting: a non-empty string (or null where allowed) that is not a symlink loop or dangling link."""
    if isinstance(value, str) and value.strip():
        from dasslab.utils.paths import link_problem

        problem = link_problem(value)
        if problem:
            raise ConfigError(f"{key}={value}: {problem}; expected a path to a file or folder")
        return
    if value is _MISSING or (value is None and null):
        return
    if value is None:
        raise ConfigError(f"{key}: a value is required (set {key}=… on the command line)")
    raise ConfigError(f"{key}={value!r}: expected a file path{' or null' if null else ''}")


def check_device(value, key: str = "device") -> None:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``, and present on this machine."""
    if value is _MISSING or value == "auto":
        return
    import torch

    try:
        device = torch.device(str(value))
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}={value!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ConfigError(f"{key}={value!r}: this machine has {have} CUDA device(s); expected auto, cpu"
                          + (f" or cuda:0..{have - 1}" if have else ""))
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{key}={value!r}: MPS is not available on this machine; expected auto or cpu")


def _size(cfg: DictConfig, key: str) -> list[int]:
    value = _get(cfg, key)
    if value is _MISSING or value is None:
        raise ConfigError(f"{key} is not set; expected [height, width]")
    return check_pair(value, key)


def _positive(value, key: str, integer: bool = False) -> None:
    check_number(value, key, integer=integer, lo=0, lo_open=True)


def check_variance(value, key: str, auto: bool = False) -> None:
    """The reverse-step variance kind: ``beta`` | ``posterior`` | a number in [0, 1] (interpolation) [| ``auto``]."""
    number = _is_number(value) and math.isfinite(value)
    if value in ("beta", "posterior") or (number and 0.0 <= float(value) <= 1.0) or (auto and value == "auto"):
        return
    raise ConfigError(f"{key}={value!r}: expected 'beta' (the paper), 'posterior' (beta~) or a number in [0, 1] "
                      "(log-interpolation weight towards beta)" + (", or auto (calibrated)" if auto else ""))


# --------------------------------------------------------------------------- groups of settings
def _check_optimizer(cfg, prefix: str) -> None:
    g = lambda k: _get(cfg, f"{prefix}.{k}")  # noqa: E731
    check_choice(g("optimizer"), f"{prefix}.optimizer", OPTIMIZERS)
    check_number(g("lr"), f"{prefix}.lr", lo=0, lo_open=True)
    check_number(g("momentum"), f"{prefix}.momentum", lo=0, hi=1, hi_open=True)
    check_number(g("weight_decay"), f"{prefix}.weight_decay", lo=0)
    check_number(g("poly_power"), f"{prefix}.poly_power", lo=0)


def _check_segmenter(cfg) -> None:
    _check_optimizer(cfg, "segmenter")
    for key in ("batch_size", "max_steps"):
        check_number(_get(cfg, f"segmenter.{key}"), f"segmenter.{key}", integer=True, lo=1)
    check_number(_get(cfg, "segmenter.val_every"), "segmenter.val_every", integer=True, lo=0, null=True)
    check_number(_get(cfg, "segmenter.paper_batch_size"), "segmenter.paper_batch_size", integer=True, lo=1, null=True)
    check_path(_get(cfg, "segmenter.init_ckpt"), "segmenter.init_ckpt")
    if cfg.get("adapt") is not None:
        _check_optimizer(cfg, "adapt.optim")


def _check_backbone(cfg) -> None:
    if cfg.get("backbone") is None:
        return
    from dasslab.segmentation.model import SEGMENTER_NAMES

    check_choice(_get(cfg, "backbone.name"), "backbone.name", SEGMENTER_NAMES)
    check_bool(_get(cfg, "backbone.pretrained"), "backbone.pretrained")
    check_bool(_get(cfg, "backbone.freeze_bn"), "backbone.freeze_bn", null=True)
    check_path(_get(cfg, "backbone.weights"), "backbone.weights")


def _check_diffusion(cfg) -> None:
    d = "diffusion"
    if cfg.get(d) is None:
        return
    from dasslab.diffusion.unet import PRESETS

    check_choice(_get(cfg, f"{d}.preset"), f"{d}.preset", tuple(PRESETS))
    check_number(_get(cfg, f"{d}.lr"), f"{d}.lr", lo=0, lo_open=True)
    for key in ("batch_size", "max_steps", "num_timesteps", "sample_steps", "checkpoint_every"):
        check_number(_get(cfg, f"{d}.{key}"), f"{d}.{key}", integer=True, lo=1)
    check_number(_get(cfg, f"{d}.sample_every"), f"{d}.sample_every", integer=True, lo=0)
    for key in ("beta_start", "beta_end"):
        check_number(_get(cfg, f"{d}.{key}"), f"{d}.{key}", lo=0, hi=1, lo_open=True, hi_open=True)
    if not 0 < cfg.diffusion.beta_start < cfg.diffusion.beta_end < 1:
        raise ConfigError(f"diffusion.beta_start={cfg.diffusion.beta_start}, beta_end={cfg.diffusion.beta_end}: "
                          f"expected 0 < beta_start < beta_end < 1")
    betas = _get(cfg, f"{d}.adam_betas")
    if betas is not _MISSING:
        if not (isinstance(betas, list) and len(betas) == 2):
            raise ConfigError(f"{d}.adam_betas={betas!r}: expected [beta1, beta2], two numbers in [0, 1)")
        for i, b in enumerate(betas):
            check_number(b, f"{d}.adam_betas[{i}]", lo=0, hi=1, hi_open=True)
    check_number(_get(cfg, f"{d}.ema_decay"), f"{d}.ema_decay", lo=0, hi=1)
    check_bool(_get(cfg, f"{d}.ema_warmup"), f"{d}.ema_warmup")
    check_bool(_get(cfg, f"{d}.compile"), f"{d}.compile")
    for key in ("autocast", "autocast_cpu"):
        v = _get(cfg, f"{d}.{key}")
        check_choice(v.lower() if isinstance(v, str) else v, f"{d}.{key}", AUTOCAST, null=True)
    check_pair(_get(cfg, f"{d}.image_size"), f"{d}.image_size")


def _check_data(cfg) -> None:
    check_number(_get(cfg, "data.num_workers"), "data.num_workers", integer=True, lo=0)
    check_number(_get(cfg, "data.limit_train"), "data.limit_train", integer=True, lo=1, null=True)
    check_number(_get(cfg, "data.limit_val"), "data.limit_val", integer=True, lo=1, null=True)
    check_choice(_get(cfg, "data.prescan"), "data.prescan", PRESCAN, null=True)
    check_number(_get(cfg, "data.max_pixels"), "data.max_pixels", integer=True, lo=1, null=True)


def _check_inference(cfg, prefix: str, image) -> None:
    mode = _get(cfg, f"{prefix}.mode")
    check_choice(mode, f"{prefix}.mode", INFERENCE_MODES)
    crop = check_pair(_get(cfg, f"{prefix}.crop"), f"{prefix}.crop", null=True)
    check_pair(_get(cfg, f"{prefix}.stride"), f"{prefix}.stride", null=True)
    if mode == "slide" and crop is None:
        raise ConfigError(f"{prefix}.crop=null: {prefix}.mode=slide needs the window size; expected [height, width]")
    if crop is not None and image is not None and (crop[0] > image[0] or crop[1] > image[1]):
        raise ConfigError(f"{prefix}.crop={crop}: larger than the image it slides over (dataset.image_size={image}); "
                          f"expected at most {image}")


def _check_eval(cfg, image, reads: bool) -> None:
    if cfg.get("eval") is None:
        return
    split = _get(cfg, "eval.split")
    check_choice(split, "eval.split", SPLIT_KEYS)
    if reads and (cfg.dataset.get(split) is None):
        have = [k for k in SPLIT_KEYS if cfg.dataset.get(k) is not None]
        raise ConfigError(f"eval.split={split}: dataset={cfg.dataset.get('name')} has no dataset.{split}; expected "
                          f"one of {', '.join(have)}")
    check_number(_get(cfg, "eval.batch_size"), "eval.batch_size", integer=True, lo=1)
    check_number(_get(cfg, "eval.overlays"), "eval.overlays", integer=True, lo=0)
    _check_inference(cfg, "eval.inference", image)


def _check_trainer(cfg) -> None:
    if cfg.get("trainer") is None:
        return
    t = "trainer"
    check_choice(_get(cfg, f"{t}.accelerator"), f"{t}.accelerator", ACCELERATORS)
    devices = _get(cfg, f"{t}.devices")
    if not (devices in ("auto", -1) or isinstance(devices, list) or devices is _MISSING):
        check_number(devices, f"{t}.devices", integer=True, lo=1, extra=("auto",))
    for key in ("num_nodes", "accumulate_grad_batches", "log_every_n_steps"):
        check_number(_get(cfg, f"{t}.{key}"), f"{t}.{key}", integer=True, lo=1)
    check_number(_get(cfg, f"{t}.num_sanity_val_steps"), f"{t}.num_sanity_val_steps", integer=True, lo=-1)
    precision = _get(cfg, f"{t}.precision")
    check_choice(str(precision) if isinstance(precision, int) else precision, f"{t}.precision", PRECISIONS)
    check_number(_get(cfg, f"{t}.gradient_clip_val"), f"{t}.gradient_clip_val", lo=0, null=True)
    check_bool(_get(cfg, f"{t}.deterministic"), f"{t}.deterministic", null=True, extra=("warn",))
    check_bool(_get(cfg, f"{t}.benchmark"), f"{t}.benchmark", null=True)


def _check_translate(cfg, T: int) -> None:
    t = cfg.translate
    depths = _get(cfg, "translate.depths")
    depths = depths if isinstance(depths, list) and depths else [_get(cfg, "translate.depth")]
    for n in depths:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= T:
            raise ConfigError(f"translate depth n={n!r}: expected an integer in 0..{T} (diffusion.num_timesteps)")
    if t.get("num_steps") is not None:
        _positive(t.num_steps, "translate.num_steps", integer=True)
    check_variance(t.variance, "translate.variance", auto=True)
    from dasslab.calibration.plan import calibration_mode

    calibration_mode(t)
    check_choice(_get(cfg, "translate.split"), "translate.split", TRANSLATE_SPLITS)
    check_number(_get(cfg, "translate.limit"), "translate.limit", integer=True, lo=1, null=True)
    check_number(_get(cfg, "translate.batch_size"), "translate.batch_size", integer=True, lo=1)
    check_number(_get(cfg, "translate.grid_images"), "translate.grid_images", integer=True, lo=0, null=True)
    check_path(_get(cfg, "translate.out_dir"), "translate.out_dir", null=False)
    v = _get(cfg, "translate.device")
    if v is not _MISSING:
        check_device(v, "translate.device")


def _check_quality(cfg, T: int) -> None:
    q = "quality"
    if cfg.get(q) is None:
        return
    for key in ("num_steps", "num_images", "batch_size", "classifier_steps", "classifier_images"):
        check_number(_get(cfg, f"{q}.{key}"), f"{q}.{key}", integer=True, lo=1)
    for key in ("noise_check_t",):
        check_number(_get(cfg, f"{q}.{key}"), f"{q}.{key}", integer=True, lo=0, hi=T)
    check_number(_get(cfg, f"{q}.grid_images"), f"{q}.grid_images", integer=True, lo=0)
    check_variance(_get(cfg, f"{q}.variance") if _get(cfg, f"{q}.variance") is not _MISSING else "beta",
                   f"{q}.variance")
    check_choice(_get(cfg, f"{q}.source_split"), f"{q}.source_split", SPLIT_KEYS)
    check_path(_get(cfg, f"{q}.judge_ckpt"), f"{q}.judge_ckpt")
    for key in ("depths", "guided_depths"):
        _check_depths(_get(cfg, f"{q}.{key}"), f"{q}.{key}", T)
    settings = _get(cfg, f"{q}.settings")
    if isinstance(settings, dict):
        from dasslab.guidance.settings import validate_guidance

        for name, setting in settings.items():
            key = f"{q}.settings.{name}"
            if not isinstance(setting, dict):
                raise ConfigError(f"{key}={setting!r}: expected guidance settings (scale, lcg, gsg, …)")
            _check_depths(setting.get("depths", _MISSING), f"{key}.depths", T)
            check_number(setting.get("num_steps", _MISSING), f"{key}.num_steps", integer=True, lo=1, null=True)
            if "variance" in setting:
                check_variance(setting["variance"], f"{key}.variance")
            try:
                validate_guidance({k: v for k, v in setting.items() if k not in ("depths", "num_steps", "variance")})
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}") from None
    sweep = _get(cfg, f"{q}.lambda_sweep")
    if isinstance(sweep, dict):
        key = f"{q}.lambda_sweep"
        if isinstance(settings, dict) and sweep.get("setting") not in settings:
            raise ConfigError(f"{key}.setting={sweep.get('setting')!r}: expected one of {', '.join(settings)} "
                              f"({q}.settings)")
        check_choice(sweep.get("key", "scale"), f"{key}.key", ("scale", "shift"))
        check_number(sweep.get("depth", _MISSING), f"{key}.depth", integer=True, lo=0, hi=T)
        scales = sweep.get("scales") or []
        if not isinstance(scales, list):
            raise ConfigError(f"{key}.scales={scales!r}: expected a list of numbers >= 0")
        for i, v in enumerate(scales):
            check_number(v, f"{key}.scales[{i}]", lo=0)


def _check_depths(value, key: str, T: int) -> None:
    if value is _MISSING or value is None:
        return
    if not isinstance(value, list):
        raise ConfigError(f"{key}={value!r}: expected a list of depths (integers in 0..{T})")
    for i, n in enumerate(value):
        check_number(n, f"{key}[{i}]", integer=True, lo=0, hi=T)


def _check_network_sizes(cfg, stage_cfg) -> None:
    """Image sizes against the networks the run builds from the config (a checkpoint's: :mod:`dasslab.checks.files`):
    the denoiser of ``stage=diffusion`` takes sides that are multiples of ``2 ** (levels - 1)``."""
    target = str((stage_cfg.get("module") or {}).get("_target_", ""))
    if not target.endswith("build.diffusion"):
        return
    from dasslab.checkpoints import denoiser_factor

    unet = _get(cfg, "diffusion.unet")
    factor = denoiser_factor(cfg.diffusion.preset, unet if isinstance(unet, dict) else None)
    for key in ("dataset.crop_size", "diffusion.image_size"):
        size = _get(cfg, key)
        if isinstance(size, list) and any(s % factor for s in size):
            near = [max(factor, s // factor * factor) for s in size]
            raise ConfigError(f"{key}={size}: the {cfg.diffusion.preset} denoiser takes sides that are multiples of "
                              f"{factor} (its U-Net halves them {int(math.log2(factor))} times); expected e.g. {near}")


def _check_pipeline(cfg) -> None:
    jobs = cfg.pipeline.get("jobs") or {}
    bad = [r for r in cfg.pipeline.rows if r not in jobs]
    if bad:
        raise ConfigError(f"pipeline.rows: unknown rows {bad}; expected some of {', '.join(jobs)} "
                          f"(pipeline.jobs)")
    p = "pipeline"
    check_number(_get(cfg, f"{p}.parallel"), f"{p}.parallel", integer=True, lo=1, null=True)
    for key in ("reuse", "dry_run", "watch"):
        check_bool(_get(cfg, f"{p}.{key}"), f"{p}.{key}")
    seeds = _get(cfg, f"{p}.seeds")
    if seeds is not _MISSING and seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"{p}.seeds={seeds!r}: expected a list of seeds, e.g. [0,1,2], or null")
        for i, s in enumerate(seeds):
            check_number(s, f"{p}.seeds[{i}]", integer=True, lo=0, hi=SEED_MAX)


# --------------------------------------------------------------------------- the commands
def _stage_check(cfg: DictConfig, node) -> None:
    """Call ``stage.check`` (``{_target_: module.function}``) with the config: a stage's own checks of what it
    will run, before any work (named by string: validation stays below the stages in the import graph)."""
    from hydra.utils import get_object

    target = node.get("_target_") if OmegaConf.is_config(node) else node
    try:
        fn = get_object(str(target))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"stage.check: _target_={target} cannot be imported ({e})") from None
    fn(cfg)


def validate_config(cfg: DictConfig, check_files: bool = True) -> None:
    """Raise :class:`ConfigError` (or the file's error, with ``check_files``) for the first invalid value found."""
    stage_cfg = cfg.get("stage")
    if not isinstance(stage_cfg, DictConfig) or stage_cfg.get("kind") not in ("fit", "run"):
        raise ConfigError(f"stage={stage_cfg!r}: expected a file of conf/stage/ (stage=source|oracle|diffusion|…)")
    stage = stage_cfg.name
    d = cfg.dataset
    image = _size(cfg, "dataset.image_size")
    crop = _size(cfg, "dataset.crop_size")
    if crop[0] > image[0] or crop[1] > image[1]:
        raise ConfigError(f"dataset.crop_size={crop} is larger than dataset.image_size={image}")
    k = d.get("num_classes")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 < k < 255):
        raise ConfigError(f"dataset.num_classes={k!r}: expected an integer in 1..254 (255 is the ignore label)")
    check_bool(_get(cfg, "dataset.hflip"), "dataset.hflip")
    for key in ("max_side", "size_multiple"):
        check_number(_get(cfg, f"dataset.{key}"), f"dataset.{key}", integer=True, lo=1)
    check_number(_get(cfg, "seed"), "seed", integer=True, lo=0, hi=SEED_MAX)
    check_bool(_get(cfg, "trust_checkpoint"), "trust_checkpoint")
    resume = _get(cfg, "resume")
    if resume is not _MISSING and resume not in (None, False, "none", "auto"):
        check_path(resume, "resume")
    _check_segmenter(cfg)
    _check_backbone(cfg)
    _check_diffusion(cfg)
    _check_data(cfg)
    check_bool(_get(cfg, "augment.enabled"), "augment.enabled")
    for key in ("p", "mask_p"):
        check_number(_get(cfg, f"augment.{key}"), f"augment.{key}", lo=0, hi=1)
    check_number(_get(cfg, "augment.t_max"), "augment.t_max", integer=True, lo=1, null=True)
    if cfg.get("guidance") is not None:
        from dasslab.guidance.settings import validate_guidance

        validate_guidance(cfg.guidance, cfg.get("arrangement"))
    T = cfg.diffusion.num_timesteps
    if stage != "adapt":     # the adaptation's check (validate_ptl, below) includes it: each check runs once
        from dasslab.ptl.config import validate_shared

        validate_shared(cfg)
    _check_translate(cfg, T)
    if stage == "translate" and cfg.dataset.get(cfg.translate.split) is None:
        raise ConfigError(f"translate.split={cfg.translate.split}: dataset={d.get('name')} has no "
                          f"dataset.{cfg.translate.split}")
    dm = stage_cfg.get("datamodule")
    reads_eval = stage_cfg.kind == "fit" and bool(stage_cfg.get("evaluate") or (dm is not None and dm.get("val", True)))
    _check_eval(cfg, image, reads_eval)
    _check_trainer(cfg)
    if stage == "quality":
        _check_quality(cfg, T)
    _check_network_sizes(cfg, stage_cfg)
    if stage == "adapt":   # ptl.*, adapt.* (dasslab.ptl.config: the one place these are checked)
        from dasslab.ptl.config import validate_ptl

        validate_ptl(cfg, check_files=False)
    if stage == "pipeline":
        _check_pipeline(cfg)
    if stage_cfg.get("check") is not None:      # the stage's own config-time check (conf/stage/pipeline.yaml)
        _stage_check(cfg, stage_cfg.check)
    if check_files:
        from dasslab.checks.files import check_run_files

        check_run_files(cfg)
        if stage == "adapt":
            from dasslab.ptl.config import check_ptl_files

            check_ptl_files(cfg)


def validate_eval(cfg: DictConfig) -> None:
    """``dasslab-eval``: its settings (the checkpoint and the split are checked by :mod:`dasslab.checks.files`)."""
    check_path(_get(cfg, "ckpt"), "ckpt", null=False)
    image = _size(cfg, "dataset.image_size")
    check_bool(_get(cfg, "trust_checkpoint"), "trust_checkpoint")
    check_device(_get(cfg, "device"))
    check_bool(_get(cfg, "progress"), "progress", null=True)
    check_number(_get(cfg, "seed"), "seed", integer=True, lo=0, hi=SEED_MAX)
    _check_data(cfg)
    _check_eval(cfg, image, reads=True)


def validate_predict(cfg: DictConfig) -> None:
    """``dasslab-predict``: its settings, before the checkpoint is read or an image written."""
    check_path(_get(cfg, "ckpt"), "ckpt", null=False)
    check_path(_get(cfg, "input"), "input", null=False)
    check_path(_get(cfg, "output"), "output", null=False)
    size = _get(cfg, "size")
    if not (isinstance(size, str) and size.lower() == "native"):
        check_pair(size, "size", null=True, what="[height, width] in pixels (or native)")
    mode = _get(cfg, "mode")
    check_choice(mode, "mode", INFERENCE_MODES)
    check_pair(_get(cfg, "crop"), "crop", null=True)
    check_pair(_get(cfg, "stride"), "stride", null=True)
    kinds = _get(cfg, "outputs")
    if not (isinstance(kinds, list) and kinds and all(k in PREDICT_OUTPUTS for k in kinds)):
        raise ConfigError(f"outputs={kinds!r}: expected a non-empty subset of {list(PREDICT_OUTPUTS)}")
    check_number(_get(cfg, "overlay_alpha"), "overlay_alpha", lo=0, hi=1)
    check_number(_get(cfg, "batch_size"), "batch_size", integer=True, lo=1)
    check_number(_get(cfg, "num_workers"), "num_workers", integer=True, lo=0)
    check_number(_get(cfg, "max_pixels"), "max_pixels", integer=True, lo=1, null=True)
    check_device(_get(cfg, "device"))
    for key in ("progress", "trust_checkpoint", "overwrite"):
        check_bool(_get(cfg, key), key)
