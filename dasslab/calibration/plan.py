"""Which translation settings are ``auto``, and what a translation at depth t uses once they are chosen.

The three settings the calibration may choose (docs/method.md §3):

* ``ptl.t_max``          the walk's deepest depth (``null``: t_n = n, the paper);
* ``translate.variance`` the reverse steps' Sigma (``beta`` | ``posterior`` | v in [0, 1]);
* ``guidance.shift``     the calibrated guidance shift, a fraction of sigma_k (``guidance.calibrate: true``).

Each is ``auto`` (chosen per pair) or a value (used as given). ``translate.calibrate: off`` forbids ``auto``.
:class:`TranslationSettings` reads them from the config sections; :class:`TranslationPlan` answers, for a
depth, the variance and shift to translate with -- from ``calibration.json`` for the ``auto`` ones (the
calibrated depth nearest to the one asked), as given for the others.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dasslab.errors import ConfigError

__all__ = ["AUTO", "TranslationPlan", "TranslationSettings", "calibration_depths", "calibration_mode",
           "load_calibration", "wants_calibration"]

AUTO = "auto"
MODES = ("auto", "off")


def calibration_mode(translate: Mapping[str, Any]) -> str:
    """``translate.calibrate``: ``auto`` or ``off`` (YAML's ``off``/``false`` read as off)."""
    mode = translate.get("calibrate", AUTO)
    if mode is False:
        return "off"
    if mode not in MODES:
        raise ConfigError(f"translate.calibrate={mode!r}: expected auto (choose the settings left at auto from "
                          "unlabeled data) or off")
    return str(mode)


def calibration_depths(N: int, t_max: int | None, T: int, max_depths: int) -> list[tuple[int, int]]:
    """``(n, t_n)`` of the domains the calibration measures: every one, or ``max_depths`` of them evenly over
    n (the last included) when there are more; repeated depths once."""
    from dasslab.diffusion.schedule import domain_timestep

    ns = list(range(1, N + 1))
    if N > max_depths:
        ns = sorted({round(1 + i * (N - 1) / (max_depths - 1)) for i in range(max_depths)})
    out, seen = [], set()
    for n in ns:
        t = domain_timestep(n, N, t_max, T)
        if t not in seen:
            seen.add(t)
            out.append((n, t))
    return out


def _guided(guidance: Mapping[str, Any] | None) -> bool:
    """Whether the guidance group guides, with a calibrated shift (``calibrate: true``) or a raw lambda."""
    if not guidance:
        return False
    g = dict(guidance)
    strength = g.get("shift", 0.1) if g.get("calibrate") else g.get("scale", 80.0)
    return (strength == AUTO or float(strength) > 0) and bool(g.get("lcg", True) or g.get("gsg", True))


@dataclass(frozen=True)
class TranslationSettings:
    """The translation settings of a run as configured: values or ``auto``."""

    N: int
    T: int
    t_max: int | str | None
    variance: float | str
    shift: float | str | None       # None: unguided, or a raw lambda (nothing to calibrate)
    guided: bool
    num_steps: int | None
    mode: str = AUTO

    @classmethod
    def of(cls, ptl, translate, guidance, T: int) -> TranslationSettings:
        """From the ``ptl``, ``translate`` and ``guidance`` sections; one line for ``auto`` under ``off``."""
        mode = calibration_mode(translate)
        guided = _guided(guidance)
        shift = (guidance or {}).get("shift") if guided and (guidance or {}).get("calibrate") else None
        s = cls(N=int(ptl["N"]), T=int(T), t_max=ptl.get("t_max"), variance=translate.get("variance", "beta"),
                shift=shift, guided=guided, num_steps=translate.get("num_steps"), mode=mode)
        if mode == "off" and s.auto_keys():
            raise ConfigError(f"{s.auto_keys()[0]}=auto needs translate.calibrate=auto (or give it a value)")
        if guided and (guidance or {}).get("shift") == AUTO and not (guidance or {}).get("calibrate"):
            raise ConfigError("guidance.shift=auto needs guidance.calibrate=true (a raw lambda, guidance.scale, "
                              "is used as given)")
        return s

    def auto_keys(self) -> list[str]:
        """The settings left to the calibration."""
        keys = [("ptl.t_max", self.t_max), ("translate.variance", self.variance), ("guidance.shift", self.shift)]
        return [k for k, v in keys if v == AUTO]

    def given(self) -> dict:
        """The settings given explicitly (recorded in calibration.json as given)."""
        keys = {"ptl.t_max": self.t_max, "translate.variance": self.variance}
        if self.shift is not None:
            keys["guidance.shift"] = self.shift
        return {k: v for k, v in keys.items() if v != AUTO}

    def deepest(self) -> int:
        """The deepest domain's depth when t_max is given (t_max, or N for the paper's t_n = n)."""
        return int(self.t_max) if self.t_max not in (None, AUTO) else int(self.N)


def load_calibration(path, setting: str = "translate.calibration") -> dict:
    """A calibrate job's ``calibration.json`` (one line when it is missing or not one)."""
    p = Path(str(path))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{setting}={p}: not found; expected a calibrate job's calibration.json") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{setting}={p}: not a readable calibration.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("depths"), list) or not data["depths"]:
        raise ConfigError(f"{setting}={p}: not a calibration.json (no per-depth choices)")
    return data


@dataclass(frozen=True)
class TranslationPlan:
    """The settings a translation at a depth uses: the given ones, the calibrated ones for ``auto``."""

    settings: TranslationSettings
    calibration: dict | None = None
    depths: tuple = field(default=(), repr=False)

    @classmethod
    def of(cls, settings: TranslationSettings, calibration: dict | None) -> TranslationPlan:
        if settings.auto_keys() and calibration is None:
            raise ConfigError(f"{settings.auto_keys()[0]}=auto: no calibration; expected translate.calibration="
                              "PATH (a calibrate job's calibration.json) or a value")
        depths = tuple(sorted(calibration["depths"], key=lambda r: r["depth"])) if calibration else ()
        return cls(settings, calibration, depths)

    @property
    def t_max(self) -> int | None:
        t = self.settings.t_max
        return int(self.calibration["t_max"]["value"]) if t == AUTO else t

    def _nearest(self, depth: int) -> dict:
        return min(self.depths, key=lambda r: (abs(int(r["depth"]) - int(depth)), r["depth"]))

    def variance(self, depth: int, guided: bool = True):
        """Sigma of the reverse steps at ``depth`` (of the guided chain, or of the unguided one)."""
        v = self.settings.variance
        if v != AUTO:
            return v
        row = self._nearest(depth)
        return row["variance"] if guided and row.get("shift") is not None else row["variance_unguided"]

    def shift(self, depth: int) -> float | None:
        """The guidance shift at ``depth`` (None when unguided or a raw lambda)."""
        s = self.settings.shift
        if s != AUTO:
            return None if s is None else float(s)
        return float(self._nearest(depth)["shift"])

    def record(self) -> dict:
        """What the plan resolved to (a run's record): t_max and each calibrated depth's choices."""
        out = {"t_max": self.t_max, "given": self.settings.given(), "auto": self.settings.auto_keys()}
        if self.calibration:
            out["depths"] = {int(r["depth"]): {"variance": self.variance(r["depth"]),
                                               "variance_unguided": self.variance(r["depth"], guided=False),
                                               "shift": self.shift(r["depth"])} for r in self.depths}
        return out


def wants_calibration(cfg) -> bool:
    """Whether a pipeline job (its config) translates with a setting left at ``auto`` (the calibrate job's
    ``wanted``): an adaptation that translates (ptl=progressive|direct) or an export, under calibrate=auto."""
    stage = str(cfg.stage.name)
    if stage == "adapt" and cfg.ptl.get("name") not in ("progressive", "direct"):
        return False
    if stage not in ("adapt", "translate") or calibration_mode(cfg.translate) == "off":
        return False
    return bool(TranslationSettings.of(cfg.ptl, cfg.translate, cfg.guidance,
                                       int(cfg.diffusion.num_timesteps)).auto_keys())
