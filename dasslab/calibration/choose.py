"""The calibration's choices as pure functions of measured numbers (no model, no data: unit-testable).

Each rule reads only label-free measurements of translated *source* images (docs/method.md §3):

* ``hf_ratio``   the translations' high-frequency energy over the unlabeled target-train images' (1 = equal);
* ``domain``     the domain score: mean P(target) of a source-vs-target classifier trained with Eq. 2 noise on
                 both domains (unlabeled target images only), so left-over noise does not read as "target";
* ``agreement``  the guide's mIoU (%) on the translations against the *source* labels they were made from.

:func:`choose_t_max`   the smallest probed depth whose unguided domain score is within ``plateau`` of the highest
                       (where going deeper stops making the translations more target-like);
:func:`bisect`         a variance v in [0, 1] (beta~ .. beta) whose hf ratio is closest to 1, by halving;
:func:`choose_shift`   the guidance shift: among those that keep the unguided chain's domain score (within
                       ``domain_drop``) and add no more than ``hf_tolerance`` of the target's high-frequency
                       energy, the one the guide agrees with most -- the smallest within ``margin`` of that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

__all__ = ["bisect", "choose_shift", "choose_t_max", "shift_feasible", "within"]


def within(ratio: float, tolerance: float) -> bool:
    """Whether an hf ratio is within ``tolerance`` of 1 (the target images' energy)."""
    return abs(float(ratio) - 1.0) <= float(tolerance)


def choose_t_max(probe: Sequence[Mapping[str, float]], plateau: float) -> int:
    """The smallest ``depth`` of ``probe`` (rows with ``depth`` and ``domain``) whose domain score is at least
    the highest one minus ``plateau``."""
    if not probe:
        raise ValueError("choose_t_max: no probed depth")
    top = max(float(r["domain"]) for r in probe)
    return min(int(r["depth"]) for r in probe if float(r["domain"]) >= top - float(plateau))


def bisect(measure: Callable[[float], float], steps: int, tolerance: float,
           seen: Sequence[tuple[float, float]] = ()) -> tuple[float, list[tuple[float, float]]]:
    """v in [0, 1] whose ``measure(v)`` (an hf ratio, increasing in v) is closest to 1.

    Halves [0, 1] ``steps`` times from v = 0.5 (stopping early once within ``tolerance``; when every halving
    went one way, the end of the range is measured too); ``seen``: pairs measured before, returned at once when
    one is within ``tolerance`` and otherwise candidates too. A ratio that stays below 1 (above 1) drives v
    towards 1 (0): the closest reachable value is returned, and the caller reads ``within`` to tell whether it
    is close enough. Returns the best v and every (v, ratio) pair."""
    tried = [(float(v), float(r)) for v, r in seen]
    ok = [vr for vr in tried if within(vr[1], tolerance)]
    if ok:                            # a setting measured before already gets there
        return min(ok, key=lambda vr: abs(vr[1] - 1.0))[0], tried
    lo, hi = 0.0, 1.0
    for _ in range(max(1, int(steps))):
        v = (lo + hi) / 2
        ratio = float(measure(v))
        tried.append((v, ratio))
        if within(ratio, tolerance):
            break
        lo, hi = (v, hi) if ratio < 1 else (lo, v)
    else:
        if lo == 0.0 or hi == 1.0:     # every halving went one way: the end of the range may still get there
            v = lo if lo == 0.0 else hi
            tried.append((v, float(measure(v))))
    best = min(tried, key=lambda vr: abs(vr[1] - 1.0))
    return best[0], tried


def shift_feasible(row: Mapping[str, float], unguided: Mapping[str, float], hf_tolerance: float,
                   domain_drop: float) -> bool:
    """Whether a guided chain (``domain``, ``hf_smooth``) keeps the unguided one's domain score within
    ``domain_drop`` and can be brought to the target's high-frequency energy (see :func:`choose_shift`)."""
    tol, ref = float(hf_tolerance), float(unguided["hf_smooth"])
    cap = 1.0 + tol if ref <= 1.0 + tol else ref + tol      # within the target's, or no rougher than unguided
    return float(row["domain"]) >= float(unguided["domain"]) - float(domain_drop) and float(row["hf_smooth"]) <= cap


def choose_shift(rows: Sequence[Mapping[str, float]], unguided: Mapping[str, float], hf_tolerance: float,
                 domain_drop: float, fraction: float) -> tuple[float, bool]:
    """The guidance shift of one depth from ``rows`` (``shift``, ``agreement``, ``domain``, and ``hf_smooth``: the
    hf ratio of that shift's chain at the smoothest variance the calibration may use) measured with the same
    noise as ``unguided`` (the unguided chain's ``agreement``, ``domain``, ``hf_smooth``).

    A shift is *feasible* when it lowers the domain score by at most ``domain_drop`` (guidance must not undo the
    translation) and its high-frequency energy can still be brought to the target's: at the smoothest variance
    its hf ratio is at most ``1 + hf_tolerance`` (where even the unguided chain is rougher than that at the
    smoothest variance: at most the unguided chain's plus ``hf_tolerance``). Guidance that leaves more adds
    texture no variance removes: artefacts, which the guide reads as agreement. Agreement rises with the push
    and saturates; among the feasible shifts the smallest one that gets ``fraction`` of the best feasible gain in
    agreement over the unguided chain wins (the knee: more push buys little agreement and risks what these
    statistics do not see; where no agreement was measured, the weakest feasible shift). Returns ``(shift,
    feasible)``; with no feasible shift, the smallest one and False."""
    if not rows:
        raise ValueError("choose_shift: no shift measured")
    ok = [r for r in rows if shift_feasible(r, unguided, hf_tolerance, domain_drop)]
    if not ok:
        return min(float(r["shift"]) for r in rows), False
    base = float(unguided["agreement"])
    need = base + float(fraction) * (max(float(r["agreement"]) for r in ok) - base)
    knee = [float(r["shift"]) for r in ok if float(r["agreement"]) >= need - 1e-9]
    return min(knee or [float(r["shift"]) for r in ok]), True    # no agreement measured (NaN): the weakest
