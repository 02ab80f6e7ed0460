"""Semantic Gradient Guidance (SGG, Sec. 4.2): LCG and GSG arranged over the reverse steps.

:class:`SemanticGuidance` is the guidance function handed to the sampler,
``guidance(x_t, step, num_steps) -> g`` with ``step`` the 0-based position of
the reverse step (0 = first, noisiest) and ``num_steps`` the number of reverse
steps. It returns ``g = lambda * grad_x L`` for the step's guidance kind; the
sampler shifts the mean by ``mu_hat = mu - Sigma_k * g`` (classifier-guidance
sign, so that guidance *lowers* the guide's cross-entropy; Eq. 7 of the paper
prints a ``+``, which would push the image away from its label).

Modes (config ``guidance=sgg|lcg_only|gsg_only|none``, keys ``scale``,
``reduction``, ``lcg``, ``gsg``):

* ``sgg`` (``lcg=True, gsg=True``): the arrangement plan picks LCG or GSG per step
  (``arrangement=alternate|lcg_then_gsg|gsg_then_lcg|randmix``, keys ``name``, ``seed``;
  see :mod:`dasslab.guidance.arrangement`);
* ``lcg_only`` / ``gsg_only``: only that kind, at every step (Table 2 (e) / (d));
* ``none`` (or ``scale=0``, or both off): no guidance; the call returns ``None``
  without running the guide, so the sampler's result is exactly the unguided one.

Defaults: ``scale`` (lambda) = 80, the paper's value, with ``reduction="sum"``
(per-pixel CE summed over the counted pixels of each term, see
:mod:`dasslab.guidance.losses`). The paper states neither its reduction nor its
input normalisation, so lambda = 80 is a starting point, not a calibrated value:
``reduction="mean"`` with lambda acts like ``"sum"`` with lambda / (number of
counted pixels), and the useful size of the per-pixel shift ``Sigma_k * g`` was
a few to ~20 % of ``sigma_k`` on the digits benchmark (DESIGN §6). The sampler
logs that ratio per step (``Sampler.stats``: ``shift_rms``, ``shift_over_sigma``);
:attr:`SemanticGuidance.stats` adds, per guided call, the kind, the guide's loss
and the gradient norms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from dasslab.guidance.arrangement import ARRANGEMENTS, GSG, LCG, arrangement_plan
from dasslab.guidance.gsg import gsg_loss_and_grad
from dasslab.guidance.lcg import ClassCopies, class_copies, lcg_loss_and_grad
from dasslab.guidance.losses import Preprocess, SegNet, as_label, check_reduction

DEFAULT_SCALE = 80.0
DEFAULT_REDUCTION = "sum"
DEFAULT_ARRANGEMENT = "alternate"


@dataclass(frozen=True)
class GuidanceStat:
    """What one guided reverse step did (floats are means over the images of the batch).

    ``loss``: the guided loss per image (LCG: sum over the image's classes of L_c).
    ``grad_norm``: ||grad_x L||_2 per image, before lambda. ``scaled_norm`` =
    lambda * grad_norm, the norm of what the sampler receives; the mean shift is
    ``Sigma_k * g``, whose RMS over pixels the sampler logs against ``sigma_k``.
    """

    step: int
    num_steps: int
    kind: str
    loss: float
    grad_norm: float
    scaled_norm: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SemanticGuidance:
    """SGG guidance function for one batch of source labels.

    Args:
        preprocess: images in [-1, 1] -> the guide's input space (e.g. ImageNet
            normalisation); pixel-wise, keeps H x W. The LCG mask is applied after it.
        net: the guide, ``z -> logits N x K x H x W``. An ``nn.Module`` is put in eval
            mode during each call and restored afterwards; its weights never change
            and never get a ``.grad``.
        label: source labels N x H x W (or N x 1 x H x W), ``ignore_index`` = unguided.
        scale: lambda (paper: 80, the default). 0 disables guidance.
        use_lcg, use_gsg: which kinds are on (both: the arrangement decides per step;
            one: that kind at every step; none: no guidance).
        arrangement: a name from :data:`~dasslab.guidance.arrangement.ARRANGEMENTS`.
        reduction: ``"sum"`` (default) or ``"mean"``, see :mod:`dasslab.guidance.losses`.
        seed: the ``randmix`` arrangement's seed.
        ignore_index: label value without guidance (255).
        max_batch: LCG copies per guide pass (memory bound; same result), ``None`` = all.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the guide under autocast
            (the gradient is returned in the images' dtype); ``None`` = full precision.
        record_stats: keep a :class:`GuidanceStat` per guided call in :attr:`stats`.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        net: SegNet,
        label: Tensor,
        scale: float = DEFAULT_SCALE,
        use_lcg: bool = True,
        use_gsg: bool = True,
        arrangement: str = DEFAULT_ARRANGEMENT,
        reduction: str = DEFAULT_REDUCTION,
        seed: int = 0,
        ignore_index: int = 255,
        max_batch: int | None = None,
        autocast_dtype: torch.dtype | None = None,
        record_stats: bool = True,
    ) -> None:
        if arrangement not in ARRANGEMENTS:
            raise ValueError(
                f"unknown guidance arrangement {arrangement!r}; expected one of {list(ARRANGEMENTS)}"
            )
        scale = float(scale)
        if not scale >= 0 or scale == float("inf"):
            raise ValueError(f"guidance scale (lambda) must be a finite number >= 0, got {scale}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(
                f"guidance max_batch must be a positive number of copies or None, got {max_batch}"
            )
        self.preprocess = preprocess
        self.net = net
        self.scale = scale
        self.use_lcg = bool(use_lcg)
        self.use_gsg = bool(use_gsg)
        self.arrangement = arrangement
        self.reduction = check_reduction(reduction)
        self.seed = int(seed)
        self.ignore_index = int(ignore_index)
        self.max_batch = max_batch
        self.autocast_dtype = autocast_dtype
        self.record_stats = record_stats
        self.stats: list[GuidanceStat] = []
        self._plans: dict[int, list[str]] = {}
        self._label = label
        self._prepared_label: Tensor | None = None
        self._copies: ClassCopies | None = None

    # -- configuration -------------------------------------------------------------------------
    @property
    def label(self) -> Tensor:
        return self._label

    @label.setter
    def label(self, label: Tensor) -> None:
        """Guide a new batch with the same settings (the LCG class copies are rebuilt lazily)."""
        self._label = label
        self._prepared_label = None
        self._copies = None

    @property
    def enabled(self) -> bool:
        return self.scale > 0 and (self.use_lcg or self.use_gsg)

    @property
    def mode(self) -> str:
        """``"sgg"``, ``"lcg_only"``, ``"gsg_only"`` or ``"none"``."""
        if not self.enabled:
            return "none"
        if self.use_lcg and self.use_gsg:
            return "sgg"
        return "lcg_only" if self.use_lcg else "gsg_only"

    def plan(self, num_steps: int) -> list[str]:
        """The kind used at each step position for a chain of ``num_steps`` reverse steps ([] if disabled)."""
        if not self.enabled:
            return []
        if num_steps not in self._plans:
            if self.use_lcg and self.use_gsg:
                self._plans[num_steps] = arrangement_plan(self.arrangement, num_steps, self.seed)
            else:
                self._plans[num_steps] = [LCG if self.use_lcg else GSG] * num_steps
        return self._plans[num_steps]

    def kind_at(self, step: int, num_steps: int) -> str | None:
        if not self.enabled:
            return None
        if not 0 <= step < num_steps:
            raise ValueError(f"guidance step position must be in [0, {num_steps}), got {step}")
        return self.plan(num_steps)[step]

    def reset_stats(self) -> None:
        self.stats.clear()

    def __repr__(self) -> str:
        return (
            f"SemanticGuidance(mode={self.mode}, scale={self.scale}, arrangement={self.arrangement}, "
            f"reduction={self.reduction}, seed={self.seed})"
        )

    # -- the guidance function -----------------------------------------------------------------
    def _prepared(self, x_t: Tensor) -> Tensor:
        """The label as N x H x W int64 on ``x_t``'s device, cached with its LCG class copies."""
        cached = self._prepared_label
        if cached is None or cached.device != x_t.device or cached.shape != (x_t.shape[0], *x_t.shape[2:]):
            self._prepared_label = as_label(self._label, x_t)
            self._copies = None
        return self._prepared_label

    def _class_copies(self, label: Tensor) -> ClassCopies:
        if self._copies is None:
            self._copies = class_copies(label, self.ignore_index)
        return self._copies

    def loss_and_grad(self, x_t: Tensor, kind: str) -> tuple[Tensor, Tensor]:
        """``(grad_x L, loss per image)`` of one kind (``"lcg"``/``"gsg"``), before lambda."""
        label = self._prepared(x_t)
        amp = (
            torch.autocast(device_type=x_t.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with amp:
            if kind == LCG:
                return lcg_loss_and_grad(
                    x_t,
                    label,
                    self.preprocess,
                    self.net,
                    self.reduction,
                    self.ignore_index,
                    self.max_batch,
                    copies=self._class_copies(label),
                )
            if kind == GSG:
                return gsg_loss_and_grad(
                    x_t, label, self.preprocess, self.net, self.reduction, self.ignore_index
                )
        raise ValueError(f"guidance kind must be {LCG!r} or {GSG!r}, got {kind!r}")

    def __call__(self, x_t: Tensor, step: int, num_steps: int) -> Tensor | None:
        """``lambda * grad_x L`` for reverse step position ``step`` of ``num_steps``, or ``None`` if disabled."""
        kind = self.kind_at(step, num_steps)
        if kind is None:
            return None
        grad, loss = self.loss_and_grad(x_t, kind)
        if self.record_stats:
            grad_norm = float(grad.detach().float().flatten(1).norm(dim=1).mean())
            self.stats.append(
                GuidanceStat(step, num_steps, kind, float(loss.mean()), grad_norm, self.scale * grad_norm)
            )
        return grad * self.scale


_GUIDANCE_KEYS = {
    "scale",
    "reduction",
    "lcg",
    "gsg",
    "ignore_index",
    "max_batch",
    "autocast_dtype",
    "record_stats",
}
_ARRANGEMENT_KEYS = {"name", "seed"}
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": None,
    "float32": None,
    "none": None,
}


def _settings(
    cfg: Mapping[str, Any] | None, allowed: set[str], what: str, ignored: tuple[str, ...] = ()
) -> dict:
    if cfg is None:
        return {}
    out = {str(k): cfg[k] for k in cfg if not str(k).startswith("_") and str(k) not in ignored}
    unknown = sorted(set(out) - allowed)
    if unknown:
        raise ValueError(f"{what} config has unknown keys {unknown}; expected some of {sorted(allowed)}")
    return out


def make_guidance(
    preprocess: Preprocess,
    net: SegNet,
    label: Tensor,
    guidance: Mapping[str, Any] | None = None,
    arrangement: Mapping[str, Any] | str | None = None,
) -> SemanticGuidance | None:
    """Build the guidance function from the ``guidance`` and ``arrangement`` config groups.

    ``guidance`` keys: ``scale`` (lambda, default 80), ``reduction`` (default ``"sum"``),
    ``lcg``, ``gsg`` (default true), optional ``ignore_index``, ``max_batch``,
    ``autocast_dtype`` (``"bf16"``/``"fp16"``/null), ``record_stats``; a ``name`` key is
    ignored. ``arrangement``: keys ``name`` (default ``"alternate"``) and ``seed``
    (default 0), or just the name. Returns ``None`` (no guidance: the sampler runs
    unguided) when ``guidance`` is None, ``scale`` is 0, or both kinds are off.
    """
    if guidance is None:
        return None
    g = _settings(guidance, _GUIDANCE_KEYS, "guidance", ignored=("name",))
    if isinstance(arrangement, str):
        a: dict[str, Any] = {"name": arrangement}
    else:
        a = _settings(arrangement, _ARRANGEMENT_KEYS, "arrangement")
    dtype = g.get("autocast_dtype")
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(
                f"guidance.autocast_dtype must be one of {sorted(_DTYPES)} or null, got {dtype!r}"
            )
        dtype = _DTYPES[dtype.lower()]
    guide = SemanticGuidance(
        preprocess,
        net,
        label,
        scale=float(g.get("scale", DEFAULT_SCALE)),
        use_lcg=bool(g.get("lcg", True)),
        use_gsg=bool(g.get("gsg", True)),
        arrangement=str(a.get("name", DEFAULT_ARRANGEMENT)),
        reduction=str(g.get("reduction", DEFAULT_REDUCTION)),
        seed=int(a.get("seed", 0)),
        ignore_index=int(g.get("ignore_index", 255)),
        max_batch=g.get("max_batch"),
        autocast_dtype=dtype,
        record_stats=bool(g.get("record_stats", True)),
    )
    return guide if guide.enabled else None
