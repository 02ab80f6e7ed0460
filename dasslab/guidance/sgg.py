"""One SGG-guided reverse step (Sec. 4.2), all of it in this file, in the order it happens.

The sampler (:meth:`dasslab.diffusion.sampler.Sampler.reverse_step`) computes for ``x_k``

    mu      = (x_k - beta_k / sqrt(1 - alpha_bar_k) * eps_theta(x_k, k)) / sqrt(1 - beta_k)   (Eq. 4)
    Sigma_k = beta_k                                      (the paper's "fixed large" variance)

and hands ``(x_k, mu, Sigma_k)`` to :meth:`SemanticGuidance.__call__` — guided-diffusion's
``condition_mean`` — which returns the guided mean ``mu_hat``:

    1. kind    = plan[step]               LCG or GSG at this step (``arrangement``, Table 5)
    2. G       = grad_x L_kind(x_k)       :meth:`SemanticGuidance.gradient`, the ``cond_fn``:
                                          LCG (Eq. 6-9: sum_c m_c grad L_c, one batched pass,
                                          proof in ``lcg.py``) or GSG (Eq. 10). G = 0 on ignore
                                          pixels (label 255), so they keep the unguided mu + sigma z.
    3. lambda  = ``guidance.scale``       raw mode (the paper: 80), or, with ``calibrate``, per image
                 lambda_i = shift * sigma_k / RMS_i(Sigma_k G) over its labelled pixels,
                 so that the mean moves by ``shift * sigma_k`` (RMS) at every step and resolution
    4. mu_hat  = mu - lambda * Sigma_k * G    the minus sign: descent on the guide's CE. Eq. 7
                                          prints ``+``, which would push the image off its label.

Two settings go beyond the paper (both off in the paper configs): ``lcg_input: whole`` (LCG with
context, ``lcg.py``) and ``loss_on: x0`` — step 2 takes the guide's loss on the step's predicted clean
image x0_hat(x_k) = (x_k - sqrt(1 - ab_k) eps) / sqrt(ab_k) instead of on x_k (universal-guidance /
DPS style): G = grad_{x_k} L(x0_hat(x_k)), with eps held fixed (G = grad_{x0} L / sqrt(ab_k)) or,
with ``through_denoiser``, differentiated through eps_theta. Either way it is the guide's
preprocessing composed with x0_hat, so LCG and GSG run unchanged on it; the sampler hands the step's
eps over as a :class:`~dasslab.diffusion.sampler.StepContext`.

The sampler then draws ``x_{k-1} = mu_hat + sqrt(Sigma_k) z`` (no noise at the last step; ``z`` is
drawn whether or not a step is guided, so a seed gives the same noise with and without guidance).
The label is prepared and checked once per batch (here, at construction); settings are checked
once, at config time (:func:`~dasslab.guidance.settings.validate_guidance`). Nothing in a step
reads a value back to the host: statistics stay on the device until :attr:`SemanticGuidance.stats`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor

from dasslab.guidance.arrangement import GSG, LCG, arrangement_plan
from dasslab.guidance.gsg import gsg_loss_and_grad
from dasslab.guidance.lcg import auto_max_batch, class_copies, lcg_loss_and_grad
from dasslab.guidance.losses import Preprocess, SegNet, guide_mode
from dasslab.guidance.settings import GuidanceSettings, validate_guidance


@dataclass(frozen=True)
class GuidanceStat:
    """One guided step, means over the batch: the guide's loss, ||G||, lambda, ||lambda G||, and the
    RMS shift of the mean over labelled pixels relative to sigma_k (= ``shift`` when calibrated)."""

    step: int
    num_steps: int
    kind: str
    loss: float
    grad_norm: float
    scale: float
    scaled_norm: float
    shift_over_sigma: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SemanticGuidance:
    """The SGG guidance function for one batch of source labels (``label``: N x H x W, 255 = ignore).

    ``preprocess``: [-1, 1] images -> the guide's input space (pixel-wise; the LCG mask is applied
    after it). ``net``: the frozen guide, ``z -> logits``; an ``nn.Module`` runs in eval mode and
    its weights never get a ``.grad``. ``settings`` (default :class:`GuidanceSettings`) may be
    overridden by keyword for programmatic use, e.g. ``SemanticGuidance(p, g, y, scale=3.0, gsg=False)``.
    """

    def __init__(self, preprocess: Preprocess, net: SegNet, label: Tensor,
                 settings: GuidanceSettings | None = None, **overrides: Any) -> None:
        settings = settings or GuidanceSettings()
        self.settings = replace(settings, **overrides) if overrides else settings
        self.preprocess, self.net = preprocess, net
        self._plans: dict[int, list[str]] = {}
        self._records: list[tuple[int, int, str, Tensor]] = []
        self._stats: list[GuidanceStat] = []
        self._chunk: int | None = None
        self.label = label

    @property
    def label(self) -> Tensor:
        return self._label

    @label.setter
    def label(self, label: Tensor) -> None:
        """Prepare a batch's label once: class copies (LCG), labelled-pixel counts, largest class."""
        if label.dim() == 4 and label.shape[1] == 1:
            label = label[:, 0]
        if label.dim() != 3 or label.dtype.is_floating_point or label.dtype == torch.bool:
            raise ValueError(f"guidance label must be an integer N x H x W tensor, got {label.dtype} "
                             f"{tuple(label.shape)}")
        ignore = self.settings.ignore_index
        self._label = label.long()
        self._copies = class_copies(self._label, ignore)                    # host sync, once per batch
        self._count = (self._label != ignore).flatten(1).sum(1)            # labelled pixels per image
        self._max_class = int(self._copies.classes.max()) if len(self._copies) else -1
        self._chunk = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def uses_context(self) -> bool:
        """Whether the sampler must pass the step's :class:`StepContext` (guidance on x0_hat)."""
        return self.settings.loss_on == "x0"

    @property
    def mode(self) -> str:
        return self.settings.mode

    def plan(self, num_steps: int) -> list[str]:
        """The kind (``"lcg"``/``"gsg"``) of each step position of a chain of ``num_steps`` steps."""
        if num_steps not in self._plans:
            s = self.settings
            both = s.lcg and s.gsg
            self._plans[num_steps] = (arrangement_plan(s.arrangement, num_steps, s.seed) if both
                                      else [LCG if s.lcg else GSG] * num_steps)
        return self._plans[num_steps]

    # ---------------------------------------------------------------------- the guided step
    def __call__(self, x_t: Tensor, mean: Tensor, variance: Tensor, step: int, num_steps: int,
                 context=None) -> Tensor | None:
        """``condition_mean``: the guided mean ``mu - lambda * Sigma_k * G``; ``None`` = this step unguided."""
        s = self.settings
        if not s.enabled or len(self._copies) == 0:   # nothing to guide: exactly the unguided step
            return None
        kind = self.plan(num_steps)[step]                                        # 1. LCG or GSG
        grad, loss = self.gradient(x_t, kind, context)                           # 2. G (0 on ignore)
        shift = variance * grad                                                  #    Sigma_k G
        per_image = (self._count * x_t.shape[1]).clamp_min(1)
        rms = (shift.float().pow(2).flatten(1).sum(1) / per_image).sqrt()        #    over labelled pixels
        sigma = variance.float().sqrt()
        if s.calibrate:                                                          # 3. lambda
            lam = torch.where(rms > 0, s.shift * sigma / rms.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
        else:
            lam = torch.full_like(rms, s.scale)
        mean_hat = mean - lam.to(mean.dtype).view(-1, 1, 1, 1) * shift.to(mean.dtype)   # 4. minus sign
        if s.record_stats:
            g_norm = grad.detach().float().flatten(1).norm(dim=1)
            self._records.append((step, num_steps, kind, torch.stack([
                loss.mean(), g_norm.mean(), lam.mean(), (lam * g_norm).mean(), (lam * rms / sigma).mean()])))
        return mean_hat

    def gradient(self, x_t: Tensor, kind: str, context=None) -> tuple[Tensor, Tensor]:
        """``cond_fn``: ``(G, loss per image)`` of one kind, before lambda; G is 0 on ignore pixels.

        With ``loss_on: x0`` the loss is taken on x0_hat(x_t) from ``context`` (a
        :class:`~dasslab.diffusion.sampler.StepContext`): the guide's input map becomes
        ``preprocess(x0_hat(x))``, differentiated with eps fixed or through the denoiser."""
        s = self.settings
        if self._label.device != x_t.device:
            self.label = self._label.to(x_t.device)
        if tuple(self._label.shape) != (x_t.shape[0], *x_t.shape[2:]):
            raise ValueError(f"guidance label of shape {tuple(self._label.shape)} does not match images "
                             f"{tuple(x_t.shape)}; expected N x H x W")
        amp = (torch.autocast(x_t.device.type, dtype=s.autocast_dtype) if s.autocast_dtype is not None
               else contextlib.nullcontext())
        preprocess = self.preprocess
        if s.loss_on == "x0":
            if context is None:
                raise ValueError("guidance.loss_on=x0 needs the sampler's StepContext (Sampler passes it to guidance "
                                 "functions with uses_context = True)")
            x0_hat = context.x0_through_denoiser if s.through_denoiser else context.x0_fixed_eps
            preprocess = lambda x: self.preprocess(x0_hat(x))  # noqa: E731
        with guide_mode(self.net), amp:
            if kind == LCG:
                return lcg_loss_and_grad(x_t, self._label, preprocess, self._checked_net, s.reduction,
                                         s.ignore_index, self._max_batch(x_t), copies=self._copies,
                                         context=s.lcg_input == "whole")
            return gsg_loss_and_grad(x_t, self._label, preprocess, self._checked_net, s.reduction,
                                     s.ignore_index)

    def _checked_net(self, z: Tensor) -> Tensor:
        logits = self.net(z)
        if logits.dim() != 4 or logits.shape[1] <= self._max_class:   # shapes only: no host sync
            raise ValueError(f"guidance label holds class id {self._max_class} but the guide returns logits of "
                             f"shape {tuple(logits.shape)} (N x K x H x W with K > {self._max_class} expected)")
        return logits

    def _max_batch(self, x_t: Tensor) -> int | None:
        mb = self.settings.max_batch
        if mb != "auto":
            return mb
        if self._chunk is None:  # once per batch
            self._chunk = auto_max_batch(x_t, self._copies, self.preprocess, self.net)
        return self._chunk

    # ---------------------------------------------------------------------- statistics
    @property
    def stats(self) -> list[GuidanceStat]:
        """One :class:`GuidanceStat` per guided call so far (read from the device here, in one go)."""
        if self._records:
            values = torch.stack([r[3] for r in self._records]).tolist()
            self._stats += [GuidanceStat(st, n, kind, *v) for (st, n, kind, _), v in zip(self._records, values)]
            self._records = []
        return self._stats

    def reset_stats(self) -> None:
        self._records, self._stats = [], []

    def __repr__(self) -> str:
        return f"SemanticGuidance({self.settings})"


def make_guidance(preprocess: Preprocess, net: SegNet, label: Tensor,
                  guidance: Mapping[str, Any] | GuidanceSettings | None = None,
                  arrangement: Mapping[str, Any] | str | None = None) -> SemanticGuidance | None:
    """The guidance function from the ``guidance``/``arrangement`` config groups (or checked settings).

    Returns ``None`` (the sampler runs unguided) when ``guidance`` is None or asks for no guidance.
    """
    if guidance is None:
        return None
    settings = guidance if isinstance(guidance, GuidanceSettings) else validate_guidance(guidance, arrangement)
    return SemanticGuidance(preprocess, net, label, settings) if settings.enabled else None
