"""PTL's domain schedule (Sec. 4.3): which domain n a step is in, its depth t_n, the learning rate.

n = 1 + step // K, capped at N (``ptl=progressive``), is a pure function of the global step, so DDP
ranks agree and a resume continues exactly; t_n = n (the paper) or round(n t_max / N) (domain striding,
docs/method.md §3). ``ptl.lr_schedule``: ``global`` (the paper's reading) decays lr (1 - s / S)^p once
over the S = N x K adaptation iterations; ``domain`` restarts the poly decay at each domain's first
step, lr (1 - (s - s_n) / K)^p (the last domain decays over what is left of S; a single-domain run —
direct, none, ceiling — is the same as ``global``); ``constant`` keeps lr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dasslab.diffusion.schedule import domain_timestep
from dasslab.guidance.translation import chunk_seed

__all__ = ["LR_SCHEDULES", "MODES", "DomainSchedule", "domain_seed", "lr_factor", "ptl_max_steps"]

MODES = ("progressive", "direct", "none", "ceiling", "ceiling_m")
WALKS = ("progressive", "ceiling_m")   # the modes that walk N domains of K iterations
LR_SCHEDULES = ("global", "domain", "constant")


@dataclass(frozen=True)
class DomainSchedule:
    """Which domain n a global step belongs to, where that domain starts, and its depth t_n."""

    mode: str
    N: int
    K: int
    t_max: int | None = None
    T: int = 1000

    def domain(self, step: int) -> int:
        """n of ``step``: ``min(1 + step // K, N)`` (progressive, ceiling_m), N (direct, ceiling), 0 (none)."""
        if self.mode in WALKS:
            return min(1 + int(step) // self.K, self.N)
        return self.N if self.mode in ("direct", "ceiling") else 0

    def start(self, step: int) -> int:
        """The first global step of the domain ``step`` belongs to."""
        if self.mode in WALKS:
            return (self.domain(step) - 1) * self.K
        return 0

    def span(self, step: int, max_steps: int) -> tuple[int, int]:
        """(first step, length) of the domain of ``step`` in a run of ``max_steps`` iterations: K for
        n < N; the last domain (and the single one of direct/none/ceiling) lasts to ``max_steps``."""
        start = self.start(step)
        if self.mode in WALKS and self.domain(step) < self.N:
            return start, self.K
        return start, max(int(max_steps) - start, 1)

    def depth(self, n: int) -> int:
        """t_n: n (the paper) or round(n * t_max / N) (domain striding); 0 for n = 0."""
        return 0 if n == 0 else domain_timestep(n, self.N, self.t_max, self.T)

    @property
    def num_domains(self) -> int:
        return {"progressive": self.N, "ceiling_m": self.N, "direct": 1, "ceiling": 1}.get(self.mode, 0)


def lr_factor(step: int, domains: DomainSchedule, max_steps: int, power: float = 0.9, mode: str = "global") -> float:
    """The learning-rate factor of ``step`` (``ptl.lr_schedule``): poly (1 - i / L)^power with i = step,
    L = max_steps (``global``), i = step - s_n, L = the domain's length (``domain``), or 1 (``constant``)."""
    if mode == "constant":
        return 1.0
    if mode == "domain":
        start, length = domains.span(step, max_steps)
        i = int(step) - start
    else:
        i, length = int(step), max(int(max_steps), 1)
    return max(1.0 - min(i, length) / length, 0.0) ** float(power)


def domain_seed(seed: int, n: int, rank: int) -> int:
    """Seed of domain n's translations on ``rank`` (the chunk seeds derive from it: :func:`chunk_seed`)."""
    return chunk_seed(seed, n, rank)


def ptl_max_steps(ptl: Mapping[str, Any]) -> int:
    """Total adaptation iterations: ``ptl.max_steps``, or N * K when it is null."""
    steps = ptl.get("max_steps")
    return int(steps) if steps is not None else int(ptl["N"]) * int(ptl["K"])
