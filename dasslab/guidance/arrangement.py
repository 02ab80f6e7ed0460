"""Which of LCG / GSG acts at each reverse step (Table 5 of the paper).

A plan is a list with one entry, ``"lcg"`` or ``"gsg"``, per reverse step, indexed
by the step's *position* in the reverse chain: position 0 is the first (noisiest)
step, which denoises x_n -> x_{n-1}; position ``num_steps - 1`` is the last step
(x_1 -> x_0). With the paper's timestep indexing ``k = n, n-1, ..., 1``,
position ``i`` is ``k = n - i``.

``alternate`` (default, the paper's choice)
    LCG at positions 0, 2, 4, ... (k = n, n-2, ...), GSG at 1, 3, 5, ...
    (k = n-1, n-3, ...).
``lcg_then_gsg``
    LCG for the first half of the steps, GSG for the second half. With an odd
    number of steps the middle step belongs to the *first* half, i.e. LCG gets
    ceil(n/2) steps and GSG floor(n/2).
``gsg_then_lcg``
    The mirror image: GSG for the first ceil(n/2) steps, LCG for the rest.
``randmix``
    An independent fair coin per step from ``random.Random(seed)``: reproducible
    for a seed, different across seeds, and the plan for n steps is a prefix of
    the plan for n + 1 steps.

Config: ``arrangement=alternate|lcg_then_gsg|gsg_then_lcg|randmix`` with keys
``name`` and ``seed`` (only ``randmix`` uses the seed).
"""

from __future__ import annotations

import random

ARRANGEMENTS = ("alternate", "lcg_then_gsg", "gsg_then_lcg", "randmix")
LCG = "lcg"
GSG = "gsg"


def arrangement_plan(name: str, num_steps: int, seed: int = 0) -> list[str]:
    """The guidance kind (``"lcg"`` or ``"gsg"``) for each of ``num_steps`` reverse steps, first step first."""
    if name not in ARRANGEMENTS:
        raise ValueError(f"unknown guidance arrangement {name!r}; expected one of {list(ARRANGEMENTS)}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"arrangement num_steps must be a non-negative int, got {num_steps!r}")
    if name == "alternate":
        return [LCG if i % 2 == 0 else GSG for i in range(num_steps)]
    first = (num_steps + 1) // 2
    if name == "lcg_then_gsg":
        return [LCG] * first + [GSG] * (num_steps - first)
    if name == "gsg_then_lcg":
        return [GSG] * first + [LCG] * (num_steps - first)
    rng = random.Random(seed)
    return [LCG if rng.random() < 0.5 else GSG for _ in range(num_steps)]
