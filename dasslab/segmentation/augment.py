"""Noisy + masked training samples (Appendix C).

Under SGG the guide segmenter sees noisy images x_k (Eq. 2) and, for LCG, images
masked to one class region. A fraction ``p`` of training samples is therefore
replaced by q_sample(x0, t) at a random t < t_max and masked to one class drawn
from the classes present in its label. The mask is applied in the segmenter's
input space (after its normalisation), exactly as LCG applies it, and the label
outside the kept region becomes the ignore index, as in LCG's per-class loss.
"""

from __future__ import annotations

import torch


def noisy_masked(x: torch.Tensor, y: torch.Tensor, q_sample, num_timesteps: int, p: float,
                 t_max: int | None = None, mask: bool = True, ignore_index: int = 255,
                 generator: torch.Generator | None = None):
    """Augment a batch; returns ``(x, y, keep)``.

    ``x`` (N,3,H,W) in [-1,1] and ``y`` (N,H,W) are returned with the selected samples
    noised (and their labels restricted to the kept class); ``keep`` is an (N,1,H,W)
    float mask to multiply the *normalised* input by (all ones for untouched samples),
    or None when no sample was selected or masking is off.
    """
    n = x.shape[0]
    dev = x.device
    t_max = num_timesteps if t_max is None else int(t_max)
    if not 0 < t_max <= num_timesteps:
        raise ValueError(f"augment.t_max={t_max}: expected 1..{num_timesteps}")
    pick = torch.rand(n, generator=generator, device="cpu").to(dev) < p
    if not pick.any():
        return x, y, None
    x, y = x.clone(), y.clone()
    idx = pick.nonzero().flatten()
    t = torch.randint(0, t_max, (len(idx),), generator=generator, device="cpu").to(dev)
    noise = torch.randn(x[idx].shape, generator=generator, device="cpu").to(dev, x.dtype)
    x[idx] = q_sample(x[idx], t, noise)
    if not mask:
        return x, y, None
    keep = torch.ones(n, 1, *x.shape[2:], device=dev, dtype=x.dtype)
    for i in idx.tolist():
        present = torch.unique(y[i])
        present = present[present != ignore_index]
        if len(present) == 0:
            continue
        c = present[torch.randint(len(present), (1,), generator=generator, device="cpu").item()]
        region = y[i] == c
        keep[i, 0] = region.to(x.dtype)
        y[i][~region] = ignore_index
    return x, y, keep
