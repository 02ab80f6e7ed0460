"""The reverse process written out: one DDPM step with optional guidance, phi^n translation, sampling.

A translation ``phi^n`` (Sec. 4.1) diffuses a source image ``x_0`` to ``x_n`` with Eq. 2 and runs
``n`` reverse steps of the target model back to ``x_0``.  With 0-based timesteps the paper's
``x_n`` lives at index ``t = n - 1``; the reverse steps visit ``t = n-1, …, 0``.

Guidance (SGG, Sec. 4.2) is a plain function passed to the sampler — see :data:`GuidanceFn`.

Sign convention
---------------
Eq. 7 of the paper prints ``mu_hat = mu + lambda Sigma grad L``.  Adding the gradient of a
cross-entropy *increases* it, i.e. moves the image away from the label.  Following classifier
guidance (Dhariwal & Nichol 2021: ``grad log p(y|x) = -grad CE``), this project uses
``mu_hat = mu - Sigma * g`` with ``g = lambda * grad_x L_ce`` — gradient *descent* on the loss.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .schedule import NoiseSchedule, spaced_steps

__all__ = ["GuidanceFn", "Sampler"]

GuidanceFn = Callable[[Tensor, int, int], Tensor | None]
"""``guidance(x_t, step, num_steps) -> g | None``.

``x_t`` is the current sample (no grad attached), ``step`` the 0-based position of this reverse step
(0 = first, noisiest) and ``num_steps`` the number of reverse steps of the run.  Return the gradient
of the guide's loss w.r.t. ``x_t`` *already multiplied by lambda* (same shape as ``x_t``), or
``None`` for no guidance at this step.  The sampler moves the mean by ``-Sigma_t * g``.
The function manages its own autograd (``with torch.enable_grad(): ...``).
"""

Denoiser = Callable[[Tensor, Tensor], Tensor]

_CACHE_SIZE = 64


def _randn(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device), moved to ``device``."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


class Sampler:
    """DDPM ancestral sampler over ``schedule`` with ``denoiser(x_t, t) -> eps``.

    ``denoiser`` is any callable taking images and a LongTensor ``(N,)`` of *original* timesteps.
    It is always called under ``torch.no_grad()``; put it in eval mode (and use its EMA weights)
    before sampling.

    After each :meth:`translate` / :meth:`sample` call, ``stats`` holds one dict per reverse step
    (``step``, ``t``, ``sigma``, ``shift_rms``, ``shift_over_sigma``, ``skipped``) and ``skipped``
    the number of steps whose guidance was dropped because it was not finite.
    """

    def __init__(self, schedule: NoiseSchedule, denoiser: Denoiser, progress: bool = False):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"Sampler: schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.denoiser = denoiser
        self.progress = progress
        self.stats: list[dict] = []
        self.skipped: int = 0
        self._cache: OrderedDict[tuple, NoiseSchedule] = OrderedDict()

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

    def _reset_stats(self) -> None:
        self.stats = []
        self.skipped = 0

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
    ) -> Tensor:
        """One reverse step ``x_j -> x_{j-1}`` at index ``j`` of ``schedule``.

        ``mu = p_mean(x, j, eps_theta(x, t_j))`` (Eq. 4) with ``t_j = schedule.timesteps[j]``;
        guided: ``mu_hat = mu - Sigma_j * g`` where ``g = guidance(x, step, num_steps)`` is
        ``lambda * grad_x L`` — descent on the guide's cross-entropy, the corrected sign of Eq. 7.
        Then ``x_{j-1} = mu_hat + sqrt(Sigma_j) z`` with ``Sigma_j = beta_j``; no noise at the last
        step (``j == 0``); no clipping of ``x_0``.  ``z`` is drawn (from ``generator``) when not given.
        A guidance gradient with any NaN/Inf is dropped for this step (warning, counted in
        ``self.skipped``).
        """
        j = int(j)
        if not 0 <= j < schedule.num_timesteps:
            raise ValueError(
                f"reverse_step: index j={j} is out of range; allowed 0..{schedule.num_timesteps - 1}"
            )
        x = x.detach()
        t_orig = schedule.timestep(j)
        t_batch = torch.full((x.shape[0],), t_orig, dtype=torch.long, device=x.device)
        with torch.no_grad():
            eps = self.denoiser(x, t_batch)
        mu = schedule.p_mean(x, j, eps.to(x.dtype))
        var = schedule.p_variance(j).to(device=x.device, dtype=x.dtype)
        sigma = var.sqrt()
        sigma_f = math.sqrt(float(schedule.betas64[j]))  # host copy: no device sync

        shift_rms = 0.0
        skipped = False
        if guidance is not None:
            g = guidance(x, step, num_steps)
            if g is not None:
                g = g.detach()
                if g.shape != x.shape:
                    raise ValueError(
                        f"guidance returned a gradient of shape {tuple(g.shape)}; expected {tuple(x.shape)}"
                    )
                if not bool(torch.isfinite(g).all()):
                    skipped = True
                    self.skipped += 1
                    warnings.warn(
                        f"guidance gradient at reverse step {step}/{num_steps} (t={t_orig}) is not finite; "
                        "guidance skipped for this step",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                else:
                    shift = var * g.to(x.dtype)
                    mu = mu - shift
                    shift_rms = float(shift.float().pow(2).mean().sqrt())

        self.stats.append(
            {
                "step": int(step),
                "t": t_orig,
                "sigma": sigma_f,
                "shift_rms": shift_rms,
                "shift_over_sigma": shift_rms / sigma_f if sigma_f > 0 else 0.0,
                "skipped": skipped,
            }
        )
        if j == 0:
            return mu
        if z is None:
            z = _randn(x.shape, generator, x.device, x.dtype)
        return mu + sigma * z.to(device=x.device, dtype=x.dtype)

    # ------------------------------------------------------------------ loops
    def _loop(
        self,
        x: Tensor,
        sched: NoiseSchedule,
        guidance: GuidanceFn | None,
        generator: torch.Generator | None,
        desc: str,
    ) -> Tensor:
        K = sched.num_timesteps
        order = range(K - 1, -1, -1)
        if self.progress:
            from tqdm.auto import tqdm

            order = tqdm(order, total=K, desc=desc, leave=False)
        for step, j in enumerate(order):
            # One z per step before the last, drawn whether or not guidance is used, so that a
            # seed gives the same noise sequence with and without guidance.
            z = _randn(x.shape, generator, x.device, x.dtype) if j > 0 else None
            x = self.reverse_step(x, j, sched, guidance=guidance, step=step, num_steps=K, z=z)
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
    ) -> Tensor:
        """phi^n: diffuse ``x0`` (in [-1, 1]) to ``x_depth`` with Eq. 2, then denoise back to ``x_0``.

        ``depth = n`` is the number of noising steps (the paper's n, 0..T): ``x0`` is noised to
        timestep ``depth - 1`` and the reverse loop runs over ``spaced_steps(depth, num_steps)``
        of the schedule, respaced (``num_steps=None``: every step, the paper's schedule).
        ``depth = 0`` returns a copy of ``x0`` (phi^0 is the identity) and draws no noise.

        Noise order (fixed): the forward noise first, then one ``z`` per reverse step before the
        last — independent of ``guidance``, so ``guidance`` returning zeros reproduces the
        unguided result exactly for the same ``generator`` state.
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
        return self._loop(x, sched, guidance, generator, desc=f"phi^{depth}")

    def sample(
        self,
        shape: Sequence[int],
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        guidance: GuidanceFn | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Unconditional samples: ``x_{T} ~ N(0, I)`` then the reverse loop over ``spaced_steps(T, num_steps)``."""
        self._check_num_steps(num_steps)
        T = self.schedule.num_timesteps
        device = torch.device(device) if device is not None else self.schedule.betas.device
        self._reset_stats()
        kept = spaced_steps(T, T if num_steps is None else int(num_steps))
        sched = self.respaced(kept, device)
        x = _randn(shape, generator, device, dtype)
        return self._loop(x, sched, guidance, generator, desc="sample")

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
