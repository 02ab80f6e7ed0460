"""Guidance settings: the ``guidance`` and ``arrangement`` config groups, checked once, at config time.

:func:`validate_guidance` is the only place where guidance settings are checked. It is called
by ``dasslab.checks.settings`` before a stage runs and by :func:`~dasslab.guidance.sgg.make_guidance`
when it is given a plain mapping; everything downstream (the guided step, LCG, GSG, the loss)
trusts the :class:`GuidanceSettings` it receives.

Defaults: the fields of :class:`GuidanceSettings` are what a mapping that leaves a key out gets (the
library's: raw lambda, as Eq. 7 writes it); ``conf/guidance/sgg.yaml`` lists every key for the command line
and chooses ``calibrate: true`` and ``max_batch: auto`` — the rest equal the fields (a test keeps them so).

``guidance`` keys (the option file, e.g. ``guidance=gsg_only``, is the guidance's name; there is no
``guidance.name`` setting):

``scale``        lambda of Eq. 7 in raw mode (the paper: 80).
``calibrate``    ``true``: set lambda per step and per image so that the RMS of the mean shift
                 ``lambda * Sigma_k * grad L`` over the image's labelled pixels equals
                 ``shift * sigma_k`` (``scale`` is then unused). One ``shift`` means the same at
                 32x32 and at 512x1024, with either reduction.
``shift``        the calibrated shift as a fraction of ``sigma_k`` (e.g. 0.1), or ``auto``: chosen per depth by
                 the label-free calibration (:mod:`dasslab.calibration`), which replaces it before a translation.
``reduction``    ``sum`` (default) or ``mean`` of the guide's per-pixel CE, see ``losses.py``.
``lcg``/``gsg``  which kinds are on; both: the arrangement decides per step.
``ignore_index`` label value without guidance (255).
``max_batch``    LCG copies per guide pass: ``null``/``all`` (one pass), a positive int, or
                 ``auto`` (from free GPU memory on CUDA; one pass on CPU). Same result either way.
``autocast_dtype`` the guide's autocast dtype: ``bf16``/``fp16``/``null`` (full precision).
``record_stats`` keep per-step statistics (on the device, read once at the end).
``lcg_input``    what the guide sees in an LCG term: ``masked`` (the paper, Eq. 6: x ⊙ m_c, the
                 rest set to the guide's zero input) or ``whole`` (LCG with context: the whole
                 image, the loss and the gradient still restricted to the class region m_c).
``loss_on``      where the guide's loss is taken: ``x_t`` (the paper: the noisy sample) or ``x0``
                 (beyond the paper: the predicted clean image x0_hat(x_t) of the step, so the guide
                 reads an image like those it was trained on; the shift is still applied to mu).
``through_denoiser`` with ``loss_on: x0``: backpropagate through eps_theta (DPS-style; one more
                 denoiser call and its backward per step) instead of holding the step's eps fixed.

``arrangement`` keys: ``name`` (Table 5, default ``alternate``) and ``seed`` (``randmix``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dasslab.errors import ConfigError
from dasslab.guidance.arrangement import ARRANGEMENTS
from dasslab.guidance.losses import REDUCTIONS

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": None, "float32": None, "none": None}
GUIDANCE_KEYS = {"scale", "calibrate", "shift", "reduction", "lcg", "gsg", "ignore_index", "max_batch",
                 "autocast_dtype", "record_stats", "lcg_input", "loss_on", "through_denoiser"}
LCG_INPUTS = ("masked", "whole")
GUIDE_ON = ("x_t", "x0")
ARRANGEMENT_KEYS = {"name", "seed"}
AUTO = "auto"


@dataclass(frozen=True)
class GuidanceSettings:
    """Checked guidance settings (build them with :func:`validate_guidance` from user input)."""

    scale: float = 80.0
    calibrate: bool = False
    shift: float | str = 0.1      # or "auto": the calibration's value per depth replaces it before a translation
    reduction: str = "sum"
    lcg: bool = True
    gsg: bool = True
    arrangement: str = "alternate"
    seed: int = 0
    ignore_index: int = 255
    max_batch: int | str | None = None  # None = all copies in one pass, an int, or "auto"
    autocast_dtype: torch.dtype | None = None
    record_stats: bool = True
    lcg_input: str = "masked"
    loss_on: str = "x_t"
    through_denoiser: bool = False

    @property
    def enabled(self) -> bool:
        strength = self.shift if self.calibrate else self.scale
        return (strength == AUTO or strength > 0) and (self.lcg or self.gsg)

    @property
    def mode(self) -> str:
        """``"sgg"``, ``"lcg_only"``, ``"gsg_only"`` or ``"none"``."""
        if not self.enabled:
            return "none"
        return "sgg" if self.lcg and self.gsg else ("lcg_only" if self.lcg else "gsg_only")


def _keys(cfg: Mapping[str, Any] | None, allowed: set[str], group: str, ignored: tuple[str, ...] = ()) -> dict:
    if cfg is None:
        return {}
    out = {str(k): cfg[k] for k in cfg if not str(k).startswith("_") and str(k) not in ignored}
    unknown = sorted(set(out) - allowed)
    if unknown:
        raise ConfigError(f"{group} config has unknown keys {unknown}; expected some of {sorted(allowed)}")
    return out


def _number(value: Any, key: str, positive: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"{key}={value!r}: expected a finite number {'> 0' if positive else '>= 0'}")
    return float(value)


def validate_guidance(guidance: Mapping[str, Any] | None,
                      arrangement: Mapping[str, Any] | str | None = None) -> GuidanceSettings:
    """Check the ``guidance`` and ``arrangement`` config groups; raise a one-line ConfigError naming the key."""
    g = _keys(guidance, GUIDANCE_KEYS, "guidance")
    a = {"name": arrangement} if isinstance(arrangement, str) else _keys(arrangement, ARRANGEMENT_KEYS,
                                                                          "arrangement")
    d = GuidanceSettings()
    calibrate = g.get("calibrate", d.calibrate)
    if not isinstance(calibrate, bool):
        raise ConfigError(f"guidance.calibrate={calibrate!r}: expected true or false")
    scale = _number(g.get("scale", d.scale), "guidance.scale")
    shift = g.get("shift", d.shift)
    shift = shift if shift == AUTO else _number(shift, "guidance.shift")   # auto: chosen per depth by the calibration
    reduction = g.get("reduction", d.reduction)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"guidance.reduction={reduction!r}: expected one of {list(REDUCTIONS)}")
    for key in ("lcg", "gsg", "record_stats", "through_denoiser"):
        if not isinstance(g.get(key, True), bool):
            raise ConfigError(f"guidance.{key}={g[key]!r}: expected true or false")
    ignore = g.get("ignore_index", d.ignore_index)
    if isinstance(ignore, bool) or not isinstance(ignore, int):
        raise ConfigError(f"guidance.ignore_index={ignore!r}: expected an integer label value")
    max_batch = g.get("max_batch")
    if max_batch == "all":
        max_batch = None
    if max_batch is not None and max_batch != "auto" and (
            isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ConfigError(f"guidance.max_batch={max_batch!r}: expected a positive int, 'auto', 'all' or null")
    dtype = g.get("autocast_dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype.lower() not in DTYPES):
        raise ConfigError(f"guidance.autocast_dtype={dtype!r}: expected one of {sorted(DTYPES)} or null")
    lcg_input = g.get("lcg_input", d.lcg_input)
    if lcg_input not in LCG_INPUTS:
        raise ConfigError(f"guidance.lcg_input={lcg_input!r}: expected one of {list(LCG_INPUTS)}")
    on = g.get("loss_on", d.loss_on)
    if on not in GUIDE_ON:
        raise ConfigError(f"guidance.loss_on={on!r}: expected one of {list(GUIDE_ON)}")
    if g.get("through_denoiser", False) and on != "x0":
        raise ConfigError("guidance.through_denoiser=true needs guidance.loss_on=x0 (it differentiates x0_hat)")
    name = a.get("name", d.arrangement)
    if name not in ARRANGEMENTS:
        raise ConfigError(f"arrangement.name={name!r}: unknown guidance arrangement; expected one of "
                          f"{list(ARRANGEMENTS)}")
    seed = a.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"arrangement.seed={seed!r}: expected an integer")
    return GuidanceSettings(scale=scale, calibrate=calibrate, shift=shift, reduction=reduction,
                            lcg=g.get("lcg", True), gsg=g.get("gsg", True), arrangement=name, seed=seed,
                            ignore_index=ignore, max_batch=max_batch,
                            autocast_dtype=DTYPES[dtype.lower()] if dtype is not None else None,
                            record_stats=g.get("record_stats", True), lcg_input=lcg_input, loss_on=on,
                            through_denoiser=g.get("through_denoiser", False))
