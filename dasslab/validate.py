"""Checks of config values that can be wrong, with one-line errors naming the setting."""

from __future__ import annotations

from omegaconf import DictConfig

from dasslab.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here too)


def _size(cfg: DictConfig, key: str) -> list[int]:
    node = cfg
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    if node is None:
        raise ConfigError(f"{key} is not set; expected [height, width]")
    vals = list(node) if not isinstance(node, int) else [node, node]
    if len(vals) != 2 or not all(isinstance(v, int) and v > 0 for v in vals):
        raise ConfigError(f"{key}={vals}: expected [height, width], two positive integers")
    return vals


def _positive(value, key: str, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        raise ConfigError(f"{key}={value!r}: expected a positive {'integer' if integer else 'number'}")


def check_variance(value, key: str) -> None:
    """The reverse-step variance kind: ``beta`` | ``posterior`` | a number in [0, 1] (interpolation)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value in ("beta", "posterior") or (number and 0.0 <= float(value) <= 1.0):
        return
    raise ConfigError(f"{key}={value!r}: expected 'beta' (the paper), 'posterior' (beta~) or a number in [0, 1] "
                      "(log-interpolation weight towards beta)")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first invalid value found."""
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
    if k is not None and (not isinstance(k, int) or not 0 < k < 255):
        raise ConfigError(f"dataset.num_classes={k!r}: expected an integer in 1..254 (255 is the ignore label)")
    for key in ("lr", "batch_size", "max_steps"):
        _positive(cfg.segmenter[key], f"segmenter.{key}", integer=key != "lr")
    if cfg.segmenter.get("optimizer", "sgd") not in ("sgd", "adamw"):
        raise ConfigError(f"segmenter.optimizer={cfg.segmenter.optimizer!r}: expected 'sgd' or 'adamw'")
    for key in ("lr", "batch_size", "max_steps", "num_timesteps"):
        _positive(cfg.diffusion[key], f"diffusion.{key}", integer=key != "lr")
    if not 0 < cfg.diffusion.beta_start < cfg.diffusion.beta_end < 1:
        raise ConfigError(f"diffusion.beta_start={cfg.diffusion.beta_start}, beta_end={cfg.diffusion.beta_end}: "
                          f"expected 0 < beta_start < beta_end < 1")
    aug = cfg.augment
    if aug.enabled and not 0 <= aug.p <= 1:
        raise ConfigError(f"augment.p={aug.p}: expected a fraction in [0, 1]")
    if cfg.get("guidance") is not None:
        from dasslab.guidance.settings import validate_guidance

        validate_guidance(cfg.guidance, cfg.get("arrangement"))
    T = cfg.diffusion.num_timesteps
    _positive(cfg.ptl.N, "ptl.N", integer=True)
    t_max = cfg.ptl.get("t_max")
    if t_max is None and cfg.ptl.N > T:
        raise ConfigError(f"ptl.N={cfg.ptl.N} exceeds diffusion.num_timesteps={T}; set ptl.t_max to stride")
    if t_max is not None and not 0 < t_max <= T:
        raise ConfigError(f"ptl.t_max={t_max}: expected 1..{T} (diffusion.num_timesteps)")
    t = cfg.translate
    depths = list(t.depths) if t.get("depths") else [t.depth]
    for n in depths:
        if not isinstance(n, int) or not 0 <= n <= T:
            raise ConfigError(f"translate depth n={n!r}: expected an integer in 0..{T} (diffusion.num_timesteps)")
    if t.get("num_steps") is not None:
        _positive(t.num_steps, "translate.num_steps", integer=True)
    check_variance(t.get("variance", "beta"), "translate.variance")
    if stage == "adapt":
        from dasslab.lit.ptl_module import validate_ptl

        validate_ptl(cfg)
    if stage == "pipeline":
        jobs = cfg.pipeline.get("jobs") or {}
        bad = [r for r in cfg.pipeline.rows if r not in jobs]
        if bad:
            raise ConfigError(f"pipeline.rows: unknown rows {bad}; expected some of {', '.join(jobs)} "
                              f"(pipeline.jobs)")
    if cfg.adapt.loss not in ("ada_src", "ada"):
        raise ConfigError(f"adapt.loss={cfg.adapt.loss!r}: expected 'ada_src' (Eq. 12) or 'ada' (Table 3 (a))")
