"""The DDPM noise schedule: every coefficient of the forward and reverse process in one place.

Conventions (docs/method.md §1):

* Timesteps are **0-based**: ``t ∈ {0, …, T-1}``; ``t = 0`` is the paper's step 1 (``beta_1``).
  The paper's ``x_n`` (n noising steps) is therefore ``x`` at index ``t = n - 1``.
* ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s <= t} alpha_s``.
* Images live in ``[-1, 1]``.

Coefficients are computed in float64 and stored as float32 buffers of an ``nn.Module`` so they
follow ``.to(device)``.  The buffers are *non-persistent*: a schedule is fully determined by its
betas (i.e. by the config), so it adds nothing to checkpoints and never blocks loading one.

Equation numbers refer to Peng et al., "Diffusion-based Image Translation with Label Guidance
for Domain Adaptive Semantic Segmentation", ICCV 2023 (which follows Ho et al., DDPM, 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NoiseSchedule", "domain_timestep", "spaced_steps"]

Index = int | Tensor


class NoiseSchedule(nn.Module):
    """A discrete variance schedule ``beta_0 … beta_{K-1}`` and the quantities derived from it.

    Buffers (float32 unless noted, one entry per step of *this* schedule):

    ``betas``                     beta_t
    ``alphas``                    1 - beta_t
    ``alpha_bar``                 prod_{s<=t} alpha_s
    ``alpha_bar_prev``            alpha_bar_{t-1}, with alpha_bar_{-1} := 1
    ``sqrt_alpha_bar``            sqrt(alpha_bar_t)
    ``sqrt_one_minus_alpha_bar``  sqrt(1 - alpha_bar_t)
    ``sqrt_recip_alphas``         1 / sqrt(alpha_t)
    ``eps_coef``                  beta_t / sqrt(1 - alpha_bar_t)        (the eps weight in Eq. 4)
    ``posterior_variance``        beta~_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
                                  ("fixed small"; kept for reference, the paper uses beta_t)
    ``timesteps`` (int64)         the timestep of the *original* (training) schedule that each entry
                                  corresponds to; ``arange(K)`` for a full schedule, the kept steps for
                                  a :meth:`respace`-d one.  This is what the denoiser must be given.

    Indices ``t`` passed to the methods below index *this* schedule (``0 … K-1``); for a full
    schedule they coincide with the original timesteps.
    """

    betas: Tensor
    alphas: Tensor
    alpha_bar: Tensor
    alpha_bar_prev: Tensor
    sqrt_alpha_bar: Tensor
    sqrt_one_minus_alpha_bar: Tensor
    sqrt_recip_alphas: Tensor
    eps_coef: Tensor
    posterior_variance: Tensor
    timesteps: Tensor

    def __init__(self, betas: Tensor | Sequence[float], timesteps: Tensor | Sequence[int] | None = None):
        super().__init__()
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.ndim != 1 or b.numel() == 0:
            raise ValueError(
                f"NoiseSchedule: betas must be a non-empty 1-D tensor, got shape {tuple(b.shape)}"
            )
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ValueError(
                f"NoiseSchedule: every beta must lie in (0, 1); got min {b.min().item():.3g}, "
                f"max {b.max().item():.3g}"
            )
        if timesteps is None:
            ts = torch.arange(b.numel(), dtype=torch.int64)
        else:
            ts = torch.as_tensor(timesteps, dtype=torch.int64).detach().cpu().flatten()
            if ts.numel() != b.numel():
                raise ValueError(
                    f"NoiseSchedule: timesteps has {ts.numel()} entries but betas has {b.numel()}"
                )
        # Host copies (not buffers, never moved): exact respacing and sync-free per-step logging.
        self._betas64 = b
        self._timestep_list: list[int] = [int(v) for v in ts.tolist()]

        alphas = 1.0 - b
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        derived = {
            "betas": b,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            "sqrt_recip_alphas": alphas.rsqrt(),
            "eps_coef": b / (1.0 - alpha_bar).sqrt(),
            "posterior_variance": b * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar),
        }
        for name, value in derived.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)
        self.register_buffer("timesteps", ts, persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """DDPM's linear schedule: ``beta_t`` evenly spaced from ``beta_start`` to ``beta_end``."""
        if int(num_timesteps) < 1:
            raise ValueError(f"NoiseSchedule.linear: num_timesteps must be >= 1, got {num_timesteps}")
        if not (0 < beta_start < 1 and 0 < beta_end < 1):
            raise ValueError(
                f"NoiseSchedule.linear: beta_start and beta_end must lie in (0, 1), got {beta_start}, {beta_end}"
            )
        betas = torch.linspace(beta_start, beta_end, int(num_timesteps), dtype=torch.float64)
        return cls(betas)

    @property
    def num_timesteps(self) -> int:
        """Number of steps ``K`` of this schedule (``T`` for a full one)."""
        return int(self.betas.shape[0])

    @property
    def betas64(self) -> Tensor:
        """The betas in float64 on the CPU (the exact values the buffers were computed from)."""
        return self._betas64

    def timestep(self, j: int) -> int:
        """Original timestep of index ``j`` as a Python int (no device sync)."""
        return self._timestep_list[int(j)]

    def __len__(self) -> int:
        return self.num_timesteps

    def extra_repr(self) -> str:
        b = self._betas64
        ts = self.timesteps
        return (
            f"num_timesteps={self.num_timesteps}, betas=[{b[0].item():.4g} … {b[-1].item():.4g}], "
            f"timesteps=[{int(ts[0])} … {int(ts[-1])}]"
        )

    def respace(self, kept: Sequence[int] | Tensor) -> NoiseSchedule:
        """A schedule over the subset ``kept`` of this schedule's steps (improved-diffusion's respacing).

        The betas are recomputed as ``beta'_j = 1 - alpha_bar[kept_j] / alpha_bar[kept_{j-1}]``
        (with ``alpha_bar[kept_{-1}] := 1``), so that ``alpha_bar`` — and hence the marginal
        ``q(x_t | x_0)`` of Eq. 2 — is unchanged at every kept step.  The ``timesteps`` of the
        result hold the *original* timestep values (``self.timesteps[kept]``), so the denoiser is
        queried with the ``t`` it was trained with.  ``kept`` indexes this schedule.
        """
        if isinstance(kept, Tensor):
            kept = kept.detach().cpu().flatten().tolist()
        kept = list(kept)
        if len(kept) == 0:
            raise ValueError("NoiseSchedule.respace: kept is empty; keep at least one timestep")
        for k in kept:
            if isinstance(k, bool) or not isinstance(k, int) and not (hasattr(k, "__index__")):
                raise ValueError(f"NoiseSchedule.respace: kept must hold integers, got {k!r}")
        kept = [int(k) for k in kept]
        K = self.num_timesteps
        bad = [k for k in kept if not 0 <= k < K]
        if bad:
            raise ValueError(
                f"NoiseSchedule.respace: kept timesteps {bad[:5]} are out of range; allowed 0..{K - 1}"
            )
        if any(b <= a for a, b in pairwise(kept)):
            raise ValueError(
                "NoiseSchedule.respace: kept must be sorted in increasing order without duplicates, "
                f"got {kept[:10]}{' …' if len(kept) > 10 else ''}"
            )
        idx = torch.tensor(kept, dtype=torch.int64)
        ab = torch.cumprod(1.0 - self._betas64, dim=0)[idx]
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        new_betas = 1.0 - ab / ab_prev
        out = NoiseSchedule(new_betas, timesteps=self.timesteps.detach().cpu()[idx])
        return out.to(self.betas.device)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _gather(buf: Tensor, t: Index, like: Tensor) -> Tensor:
        """``buf[t]`` shaped to broadcast against ``like`` (batch dimension first) in ``like``'s dtype.

        ``t`` is a Python int / 0-d tensor (one step for the whole batch) or a LongTensor ``(N,)``.
        """
        if isinstance(t, Tensor) and t.ndim > 0:
            if t.ndim != 1:
                raise ValueError(
                    f"NoiseSchedule: t must be an int or a 1-D LongTensor, got shape {tuple(t.shape)}"
                )
            v = buf[t.to(buf.device, torch.long)]
            v = v.reshape(-1, *([1] * (like.ndim - 1)))
        else:
            v = buf[int(t)]
        return v.to(device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Index, noise: Tensor | None = None) -> Tensor:
        """Sample ``q(x_t | x_0)`` (Eq. 2): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``.

        ``t`` indexes this schedule (an int for the whole batch, or a LongTensor ``(N,)``);
        ``noise`` is ``eps ~ N(0, I)``, drawn with the global RNG when omitted.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(
                f"q_sample: noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}"
            )
        return (
            self._gather(self.sqrt_alpha_bar, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alpha_bar, t, x0) * noise
        )

    def predict_x0(self, x_t: Tensor, t: Index, eps: Tensor) -> Tensor:
        """Invert Eq. 2 for ``x_0`` given a noise estimate: ``(x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``."""
        return (x_t - self._gather(self.sqrt_one_minus_alpha_bar, t, x_t) * eps) / self._gather(
            self.sqrt_alpha_bar, t, x_t
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean(self, x_t: Tensor, t: Index, eps: Tensor) -> Tensor:
        """Mean of ``p_theta(x_{t-1} | x_t)`` from a noise prediction (Eq. 4).

        ``mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(1 - beta_t)``.

        With the true noise of a known ``x_0`` this is exactly the posterior mean of
        ``q(x_{t-1} | x_t, x_0)``; at ``t = 0`` it equals ``x_0``.
        """
        return self._gather(self.sqrt_recip_alphas, t, x_t) * (
            x_t - self._gather(self.eps_coef, t, x_t) * eps
        )

    def p_variance(self, t: Index) -> Tensor:
        """Variance ``Sigma_t`` of ``p_theta(x_{t-1} | x_t)``: ``beta_t`` ("fixed large", the paper's choice).

        Returns ``betas[t]`` (a 0-d tensor for an int ``t``, shape ``(N,)`` for a LongTensor).
        """
        if isinstance(t, Tensor) and t.ndim > 0:
            return self.betas[t.to(self.betas.device, torch.long)]
        return self.betas[int(t)]

    def reverse_variances(self, kind: str | float = "beta") -> Tensor:
        """``Sigma_j`` of every reverse step of this schedule, float64 on the CPU, for a variance ``kind``.

        ``"beta"``       beta_j, "fixed large" (the paper's choice, Sec. 4.1).
        ``"posterior"``  beta~_j = beta_j (1 - alpha_bar_{j-1}) / (1 - alpha_bar_j), "fixed small", the
                         variance of q(x_{j-1} | x_j, x_0); at j = 0 (where it is 0) beta~_1 is used, as
                         improved-diffusion clips it, so a guided last step still has a Sigma.
        ``v`` in [0, 1]  the log-linear interpolation exp(v log beta_j + (1 - v) log beta~_j) of
                         improved-diffusion's learned variance, with a fixed v (1 = beta, 0 = beta~).

        The two ends coincide when every step is kept (beta~_j ~ beta_j for small beta) and part ways
        on a respaced chain, whose betas are large: there ``beta`` leaves the sample noisy and
        ``posterior`` smooths it (measured in experiments/digits_demo).
        """
        b = self._betas64
        ab = torch.cumprod(1.0 - b, dim=0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post = b * (1.0 - ab_prev) / (1.0 - ab)
        post[0] = post[1] if len(post) > 1 else b[0]
        if isinstance(kind, str):
            if kind == "beta":
                return b.clone()
            if kind == "posterior":
                return post
            raise ValueError(f"reverse variance {kind!r}: expected 'beta', 'posterior' or a number in [0, 1]")
        if isinstance(kind, bool) or not isinstance(kind, int | float) or not 0.0 <= float(kind) <= 1.0:
            raise ValueError(f"reverse variance {kind!r}: expected 'beta', 'posterior' or a number in [0, 1]")
        v = float(kind)
        return torch.exp(v * b.log() + (1.0 - v) * post.log())

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        denoiser: Callable[[Tensor, Tensor], Tensor],
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The simple DDPM objective (Eq. 5): ``E_{t, eps} || eps - eps_theta(x_t, t) ||^2`` (mean over elements).

        ``t`` (LongTensor ``(N,)``, indices into this schedule) is drawn uniformly when omitted and
        ``noise`` from ``N(0, I)``; both use ``generator`` if given.  The denoiser receives the
        original timesteps (``self.timesteps[t]``).
        """
        n = x0.shape[0]
        if t is None:
            gen_dev = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=gen_dev).to(x0.device)
        if noise is None:
            gen_dev = generator.device if generator is not None else x0.device
            noise = torch.randn(x0.shape, generator=generator, device=gen_dev, dtype=x0.dtype).to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        eps = denoiser(x_t, self.timesteps[t.to(self.timesteps.device)].to(x0.device))
        return F.mse_loss(eps.float(), noise.float())


def spaced_steps(t_max: int, num_steps: int) -> list[int]:
    """Evenly spaced subset of ``range(t_max)`` with ``min(num_steps, t_max)`` elements, sorted.

    It always contains ``t_max - 1`` (where a translation starts) and ``0`` (the last, noise-free
    step) — except for ``num_steps == 1``, which gives ``[t_max - 1]`` alone (a single step that
    jumps straight to the ``x_0`` prediction).  ``num_steps >= t_max`` gives every step.
    """
    t_max, num_steps = int(t_max), int(num_steps)
    if t_max < 1:
        raise ValueError(f"spaced_steps: t_max must be >= 1, got {t_max}")
    if num_steps < 1:
        raise ValueError(f"spaced_steps: num_steps must be >= 1, got {num_steps}")
    n = min(num_steps, t_max)
    if n == 1:
        return [t_max - 1]
    # round(i * (t_max - 1) / (n - 1)) with integer arithmetic (half rounds up); the spacing is
    # >= 1 because n <= t_max, so the values are distinct.
    return [(2 * i * (t_max - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


def domain_timestep(n: int, N: int, t_max: int | None = None, num_timesteps: int | None = None) -> int:
    """Translation depth (number of noising / reverse steps) of PTL domain ``n ∈ [0, N]``.

    * ``t_max is None`` — the paper's schedule: domain ``n`` is translated by ``phi^n``, depth ``n``.
    * otherwise — *domain striding*: the ``N`` domains are spread over ``[0, t_max]`` with
      depth ``round(n * t_max / N)`` (halves round up), so domain ``N`` reaches ``t_max``.

    ``num_timesteps`` (optional, the diffusion model's ``T``) bounds the resulting depth.
    """
    n, N = int(n), int(N)
    if N < 1:
        raise ValueError(f"domain_timestep: the number of domains N must be >= 1, got {N}")
    if not 0 <= n <= N:
        raise ValueError(f"domain_timestep: domain index n={n} is out of range; allowed 0..{N}")
    if t_max is None:
        depth = n
    else:
        t_max = int(t_max)
        if t_max < 1 or (num_timesteps is not None and t_max > int(num_timesteps)):
            hi = f"..{int(num_timesteps)}" if num_timesteps is not None else " or more"
            raise ValueError(f"domain_timestep: t_max={t_max} is out of range; allowed 1{hi}")
        depth = (2 * n * t_max + N) // (2 * N)
    if num_timesteps is not None and depth > int(num_timesteps):
        raise ValueError(
            f"domain_timestep: domain n={n} needs depth {depth} but the diffusion model has only "
            f"T={int(num_timesteps)} timesteps (set t_max <= T to stride the domains)"
        )
    return depth
