"""The reverse process written out: one DDPM step with optional guidance, phi^n translation, sampling.

A translation ``phi^n`` (Sec. 4.1) diffuses a source image ``x_0`` to ``x_n`` with Eq. 2 and runs
``n`` reverse steps of the target model back to ``x_0``.  With 0-based timesteps the paper's
``x_n`` lives at index ``t = n - 1``; the reverse steps visit ``t = n-1, …, 0``.

Guidance (SGG, Sec. 4.2) is a plain function passed to the sampler — see :data:`GuidanceFn`.  It
receives the unguided mean and ``Sigma`` and returns the guided mean; lambda, Sigma's use and the
corrected sign of Eq. 7 (``mu_hat = mu - lambda Sigma grad L``) live with it, in
:mod:`dasslab.guidance.sgg`, which writes the whole guided step out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .schedule import NoiseSchedule, spaced_steps

__all__ = ["GuidanceFn", "Sampler", "StepContext", "sampler_options"]

GuidanceFn = Callable[[Tensor, Tensor, Tensor, int, int], Tensor | None]
"""``guidance(x_t, mean, variance, step, num_steps) -> mean_hat | None`` (guided-diffusion's ``condition_mean``).

``x_t`` is the current sample (no grad attached), ``mean`` the unguided mean of Eq. 4, ``variance``
``Sigma_t`` (a 0-d tensor), ``step`` the 0-based position of this reverse step (0 = first, noisiest)
and ``num_steps`` the number of reverse steps of the run.  Return the guided mean (same shape as
``x_t``), or ``None`` for no guidance at this step.  SGG's is
:class:`dasslab.guidance.sgg.SemanticGuidance` (``mu - lambda * Sigma * grad_x L``).
The function manages its own autograd (``with torch.enable_grad(): ...``).
"""

Denoiser = Callable[[Tensor, Tensor], Tensor]


class StepContext:
    """What a guidance function may read besides ``(x_t, mean, Sigma)``: the step's noise estimate.

    Handed to a guidance function that sets ``uses_context = True`` (as ``context=``). It gives the
    predicted clean image of this step, ``x0_hat(x_t) = (x_t - sqrt(1 - ab_t) eps_theta(x_t, t)) /
    sqrt(ab_t)`` (Eq. 2 inverted), either with the step's ``eps`` held fixed (:meth:`x0_fixed_eps`:
    d x0_hat / d x_t = 1 / sqrt(ab_t)) or with the denoiser called again under autograd
    (:meth:`x0_through_denoiser`: DPS-style, the gradient flows through eps_theta).
    """

    def __init__(self, eps: Tensor, t: Tensor, sqrt_ab: Tensor, sqrt_one_minus_ab: Tensor,
                 denoiser: Denoiser, autocast_dtype: torch.dtype | None = None) -> None:
        self.eps, self.t = eps, t
        self.sqrt_ab, self.sqrt_one_minus_ab = sqrt_ab, sqrt_one_minus_ab
        self._denoiser, self._autocast = denoiser, autocast_dtype

    def x0_fixed_eps(self, x_t: Tensor) -> Tensor:
        """x0_hat with this step's eps as a constant (differentiable in ``x_t``, linear)."""
        return (x_t - self.sqrt_one_minus_ab * self.eps) / self.sqrt_ab

    def x0_through_denoiser(self, x_t: Tensor) -> Tensor:
        """x0_hat with eps_theta(x_t, t) recomputed under autograd (one more denoiser call + its backward)."""
        amp = (torch.autocast(x_t.device.type, dtype=self._autocast) if self._autocast is not None
               else contextlib.nullcontext())
        with torch.enable_grad(), amp:
            eps = self._denoiser(x_t, self.t)
        return (x_t - self.sqrt_one_minus_ab * eps.to(x_t.dtype)) / self.sqrt_ab

_CACHE_SIZE = 64
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _randn(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device), moved to ``device``."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def sampler_options(diffusion_cfg: Mapping | None, device: torch.device | str | None = None) -> dict:
    """``Sampler`` keyword arguments from the ``diffusion`` config group's speed settings.

    ``compile`` (bool, default false): ``torch.compile`` the denoiser; ``autocast`` (``bf16``/``fp16``
    /null): the denoiser's autocast dtype.  Both stay off on CPU unless set explicitly for it
    (``compile_cpu`` / ``autocast_cpu``): the measured CPU gains are in benchmarks/results.
    """
    cfg = dict(diffusion_cfg or {})
    cpu = device is not None and torch.device(device).type == "cpu"
    compile_ = cfg.get("compile_cpu", False) if cpu else cfg.get("compile", False)
    dtype = cfg.get("autocast_cpu") if cpu else cfg.get("autocast")
    return {"compile": bool(compile_), "autocast_dtype": dtype}


class Sampler:
    """DDPM ancestral sampler over ``schedule`` with ``denoiser(x_t, t) -> eps``.

    ``denoiser`` is any callable taking images and a LongTensor ``(N,)`` of *original* timesteps.
    It is always called under ``torch.no_grad()``; put it in eval mode (and use its EMA weights)
    before sampling.  ``autocast_dtype`` (``torch.bfloat16``, ``"bf16"``, ...) runs it under autocast
    (eps is returned in the images' dtype); ``compile=True`` wraps it in ``torch.compile``.

    After each :meth:`translate` / :meth:`sample` call, ``stats`` holds one dict per reverse step
    (``step``, ``t``, ``sigma``, ``shift_rms``, ``shift_over_sigma``, ``skipped``) and ``skipped``
    the number of steps whose guidance was dropped because it was not finite.  ``shift_rms`` is the
    RMS of ``mu_hat - mu`` over all elements of the batch.  The loop keeps these on the device and
    reads them back once, at the end of the call.
    """

    def __init__(self, schedule: NoiseSchedule, denoiser: Denoiser, progress: bool = False,
                 autocast_dtype: torch.dtype | str | None = None, compile: bool = False):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"Sampler: schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if isinstance(autocast_dtype, str):
            if autocast_dtype.lower() not in _DTYPES:
                raise ValueError(f"diffusion.autocast={autocast_dtype!r}: expected one of {sorted(_DTYPES)} or null")
            autocast_dtype = _DTYPES[autocast_dtype.lower()]
        self.schedule = schedule
        self.denoiser = denoiser
        self.progress = progress
        self.autocast_dtype = autocast_dtype
        self._net = torch.compile(denoiser) if compile else denoiser
        self._records: list[tuple[int, int, float, Tensor | float, Tensor | bool]] = []
        self._stats: list[dict] = []
        self._skipped = 0
        self._cache: OrderedDict[tuple, NoiseSchedule] = OrderedDict()
        self._variances: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ schedules
    def respaced(self, kept: Sequence[int], device: torch.device | str | None = None) -> NoiseSchedule:
        """``self.schedule.respace(kept)`` on ``device``, cached (LRU)."""
        device = torch.device(device) if device is not None else self.schedule.betas.device
        key = (tuple(int(k) for k in kept), str(device))
        sched = self._cache.get(key)
        if sched is None:
            sched = self.schedule.respace(list(key[0])).to(device)
            self._cache[key] = sched
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return sched

    def _variances_of(self, schedule: NoiseSchedule, variance: str | float) -> tuple[Tensor, list[float]]:
        """``Sigma_j`` of ``schedule`` for a variance kind (on its device) and ``sqrt(Sigma_j)`` as Python
        floats (host copy: no device sync per step), cached per schedule and kind."""
        per = self._variances.setdefault(schedule, {})
        if variance not in per:
            v64 = schedule.reverse_variances(variance)
            per[variance] = (v64.to(device=schedule.betas.device, dtype=torch.float32),
                             [math.sqrt(v) for v in v64.tolist()])
        return per[variance]

    # ------------------------------------------------------------------ statistics
    @property
    def stats(self) -> list[dict]:
        self._read_stats()
        return self._stats

    @property
    def skipped(self) -> int:
        self._read_stats()
        return self._skipped

    def _reset_stats(self) -> None:
        self._records, self._stats, self._skipped = [], [], 0

    def _read_stats(self) -> None:
        """Move the per-step records to ``stats`` with one device-to-host copy; warn about skipped steps."""
        if not self._records:
            return
        tensors = [(r[3], r[4]) for r in self._records if isinstance(r[3], Tensor)]
        host = torch.stack([torch.stack([a.float(), (~b).float()]) for a, b in tensors]).tolist() if tensors else []
        it = iter(host)
        for step, t, sigma, rms, _ in self._records:
            shift, skipped = (next(it) if isinstance(rms, Tensor) else (rms, 0.0))
            skipped = bool(skipped)
            shift = 0.0 if skipped else float(shift)
            self._skipped += skipped
            self._stats.append({"step": step, "t": t, "sigma": sigma, "shift_rms": shift,
                                "shift_over_sigma": shift / sigma if sigma > 0 else 0.0, "skipped": skipped})
            if skipped:
                warnings.warn(f"guidance at reverse step {step} (t={t}) is not finite; guidance skipped for this "
                              "step", RuntimeWarning, stacklevel=3)
        self._records = []

    # ------------------------------------------------------------------ one step
    def reverse_step(
        self,
        x: Tensor,
        j: int,
        schedule: NoiseSchedule,
        guidance: GuidanceFn | None = None,
        step: int = 0,
        num_steps: int = 1,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
        variance: str | float = "beta",
    ) -> Tensor:
        """One reverse step ``x_j -> x_{j-1}`` at index ``j`` of ``schedule``.

        ``mu = p_mean(x, j, eps_theta(x, t_j))`` (Eq. 4) with ``t_j = schedule.timesteps[j]`` and
        ``Sigma_j = beta_j`` (``variance="beta"``, the paper; ``"posterior"`` or an interpolation
        weight: :meth:`NoiseSchedule.reverse_variances`); guided: ``mu_hat = guidance(x, mu, Sigma_j,
        step, num_steps)`` (SGG: :mod:`dasslab.guidance.sgg`), which also gets ``context=``
        :class:`StepContext` (the step's eps, for guidance on x0_hat) if it sets ``uses_context``.
        Then ``x_{j-1} = mu_hat + sqrt(Sigma_j) z``; no noise at the last step (``j == 0``); no
        clipping of ``x_0``.  ``z`` is drawn (from ``generator``) when not given.  A guided mean
        with any NaN/Inf is dropped for this step (on the device, no sync; counted in ``skipped``,
        with a warning when the statistics are read).
        """
        j = int(j)
        if not 0 <= j < schedule.num_timesteps:
            raise ValueError(
                f"reverse_step: index j={j} is out of range; allowed 0..{schedule.num_timesteps - 1}"
            )
        x = x.detach()
        t_orig = schedule.timestep(j)
        t_batch = torch.full((x.shape[0],), t_orig, dtype=torch.long, device=x.device)
        amp = (torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with torch.no_grad(), amp:
            eps = self._net(x, t_batch)
        eps = eps.to(x.dtype)
        mu = schedule.p_mean(x, j, eps)                                  # Eq. 4
        variances, sigmas = self._variances_of(schedule, variance)
        var = variances[j].to(device=x.device, dtype=x.dtype)           # Sigma_j (beta_j: the paper)
        sigma_f = sigmas[j]  # host copy: no device sync

        shift_rms: Tensor | float = 0.0
        finite: Tensor | bool = True
        if guidance is not None:
            extra = {}
            if getattr(guidance, "uses_context", False):
                extra["context"] = StepContext(eps, t_batch, schedule.sqrt_alpha_bar[j].to(x.dtype),
                                               schedule.sqrt_one_minus_alpha_bar[j].to(x.dtype),
                                               self.denoiser, self.autocast_dtype)
            guided = guidance(x, mu, var, step, num_steps, **extra)
            if guided is not None:
                guided = guided.detach()
                if guided.shape != x.shape:
                    raise ValueError(
                        f"guidance returned a mean of shape {tuple(guided.shape)}; expected {tuple(x.shape)}"
                    )
                finite = torch.isfinite(guided).all()
                shift_rms = torch.where(finite, (guided - mu).float().pow(2).mean().sqrt(), 0.0)
                mu = torch.where(finite, guided.to(x.dtype), mu)
        self._records.append((int(step), t_orig, sigma_f, shift_rms, finite))
        if j == 0:
            return mu
        if z is None:
            z = _randn(x.shape, generator, x.device, x.dtype)
        return mu + var.sqrt() * z.to(device=x.device, dtype=x.dtype)

    # ------------------------------------------------------------------ loops
    def _loop(
        self,
        x: Tensor,
        sched: NoiseSchedule,
        guidance: GuidanceFn | None,
        generator: torch.Generator | None,
        desc: str,
        variance: str | float = "beta",
    ) -> Tensor:
        K = sched.num_timesteps
        order = range(K - 1, -1, -1)
        if self.progress:
            from dasslab.utils.progress import progress

            order = progress(order, total=K, desc=desc, leave=False)
        for step, j in enumerate(order):
            # One z per step before the last, drawn whether or not guidance is used, so that a
            # seed gives the same noise sequence with and without guidance.
            z = _randn(x.shape, generator, x.device, x.dtype) if j > 0 else None
            x = self.reverse_step(x, j, sched, guidance=guidance, step=step, num_steps=K, z=z, variance=variance)
        self._read_stats()  # the one device-to-host read of the run's statistics
        return x

    def _check_num_steps(self, num_steps: int | None) -> None:
        if num_steps is not None and (isinstance(num_steps, bool) or int(num_steps) < 1):
            raise ValueError(f"num_steps={num_steps!r} is invalid; use None (every step) or an integer >= 1")

    def translate(
        self,
        x0: Tensor,
        depth: int,
        num_steps: int | None = None,
        guidance: GuidanceFn | None = None,
        generator: torch.Generator | None = None,
        variance: str | float = "beta",
    ) -> Tensor:
        """phi^n: diffuse ``x0`` (in [-1, 1]) to ``x_depth`` with Eq. 2, then denoise back to ``x_0``.

        ``depth = n`` is the number of noising steps (the paper's n, 0..T): ``x0`` is noised to
        timestep ``depth - 1`` and the reverse loop runs over ``spaced_steps(depth, num_steps)``
        of the schedule, respaced (``num_steps=None``: every step, the paper's schedule).
        ``depth = 0`` returns a copy of ``x0`` (phi^0 is the identity) and draws no noise.

        ``variance``: Sigma of the reverse steps, ``beta`` (the paper) or, for respaced chains,
        ``posterior`` / an interpolation weight (:meth:`NoiseSchedule.reverse_variances`).

        Noise order (fixed): the forward noise first, then one ``z`` per reverse step before the
        last — independent of ``guidance``, so ``guidance`` returning the mean unchanged (or
        ``None``) reproduces the unguided result exactly for the same ``generator`` state.
        """
        T = self.schedule.num_timesteps
        if isinstance(depth, bool) or int(depth) != depth or not 0 <= int(depth) <= T:
            raise ValueError(f"translate: depth={depth!r} is out of range; allowed 0..{T} (the schedule's T)")
        depth = int(depth)
        self._check_num_steps(num_steps)
        if x0.ndim < 2:
            raise ValueError(f"translate: x0 must be a batch (N, C, H, W), got shape {tuple(x0.shape)}")
        self._reset_stats()
        if depth == 0:
            return x0.detach().clone()
        kept = spaced_steps(depth, depth if num_steps is None else int(num_steps))
        sched = self.respaced(kept, x0.device)
        x0 = x0.detach()
        noise = _randn(x0.shape, generator, x0.device, x0.dtype)
        # Eq. 2 at the last kept step (t = depth - 1); alpha_bar there equals the full schedule's.
        x = sched.q_sample(x0, sched.num_timesteps - 1, noise)
        return self._loop(x, sched, guidance, generator, desc=f"phi^{depth}", variance=variance)

    def sample(
        self,
        shape: Sequence[int],
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        guidance: GuidanceFn | None = None,
        dtype: torch.dtype = torch.float32,
        variance: str | float = "beta",
    ) -> Tensor:
        """Unconditional samples: ``x_{T} ~ N(0, I)`` then the reverse loop over ``spaced_steps(T, num_steps)``."""
        self._check_num_steps(num_steps)
        T = self.schedule.num_timesteps
        device = torch.device(device) if device is not None else self.schedule.betas.device
        self._reset_stats()
        kept = spaced_steps(T, T if num_steps is None else int(num_steps))
        sched = self.respaced(kept, device)
        x = _randn(shape, generator, device, dtype)
        return self._loop(x, sched, guidance, generator, desc="sample", variance=variance)

    @staticmethod
    def shift_summary(stats: list[dict]) -> dict[str, float]:
        """Mean and max of ``shift_over_sigma`` over the guided steps of ``stats`` (for logging)."""
        vals = [s["shift_over_sigma"] for s in stats if s["shift_rms"] > 0]
        if not vals:
            return {"shift_over_sigma_mean": 0.0, "shift_over_sigma_max": 0.0, "guided_steps": 0}
        return {
            "shift_over_sigma_mean": sum(vals) / len(vals),
            "shift_over_sigma_max": max(vals),
            "guided_steps": len(vals),
        }
