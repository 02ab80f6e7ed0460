"""Noisy and masked training samples for the guide segmenter (Appendix C).

Under SGG the guide reads two kinds of inputs (docs/method.md §2):

* GSG (Eq. 9) feeds it the whole noisy image x_k (Eq. 2) -- *noisy, unmasked*;
* LCG (Eq. 10) feeds it x_k masked to one class region -- *noisy, masked*.

So each training sample is, independently of the others,

* noised with probability ``p``: replaced by ``q_sample(x0, t, eps)`` with
  ``t ~ U{0, ..., t_max - 1}``, where ``t_max`` should be the deepest timestep the
  guide will guide (``ptl.N``, or ``ptl.t_max`` under domain striding) -- noise
  levels the guide never meets only take capacity from the ones it does;
* masked with probability ``mask_p``, drawn independently of the noise: one class
  present in its label is kept, the input is multiplied by that region's mask in the
  segmenter's normalised input space (exactly as LCG applies it) and the label outside
  the region becomes the ignore index (as in LCG's per-class loss).

A sample is therefore clean, noisy, masked, or noisy and masked, with probabilities
``(1-p)(1-mask_p)``, ``p(1-mask_p)``, ``(1-p) mask_p`` and ``p mask_p``.
Segmenters that only *read* images (the target oracle, the judge) train without it.
"""

from __future__ import annotations

import torch

from dasslab.errors import ConfigError

__all__ = ["noisy_masked"]


def _check_fraction(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"augment.{name}={value}: expected a fraction in [0, 1]")
    return value


def noisy_masked(x: torch.Tensor, y: torch.Tensor, q_sample, num_timesteps: int, p: float = 0.0,
                 mask_p: float = 0.0, t_max: int | None = None, ignore_index: int = 255,
                 generator: torch.Generator | None = None):
    """Augment a batch (see the module docstring); returns ``(x, y, keep)``.

    Args:
        x: (N, 3, H, W) images in [-1, 1]; y: (N, H, W) labels.
        q_sample: ``q_sample(x0, t, noise)`` of the diffusion schedule (Eq. 2).
        num_timesteps: T of that schedule; ``t_max`` must be in ``1..T`` (None = T).
        p: probability that a sample is noised; mask_p: probability that it is masked.
        generator: CPU generator for every random draw (reproducible augmentation).

    Returns:
        ``x`` with the noised samples replaced, ``y`` with the masked samples' labels
        restricted to their kept class, and ``keep``: an (N, 1, H, W) float mask to multiply
        the *normalised* input by (ones for unmasked samples), or None when nothing is masked.
        Inputs are never modified in place.
    """
    p, mask_p = _check_fraction(p, "p"), _check_fraction(mask_p, "mask_p")
    n, dev = x.shape[0], x.device
    t_max = num_timesteps if t_max is None else int(t_max)
    if not 0 < t_max <= num_timesteps:
        raise ConfigError(f"augment.t_max={t_max}: expected 1..{num_timesteps} (diffusion.num_timesteps)")
    draws = torch.rand(2, n, generator=generator, device="cpu")
    noised, masked = draws[0] < p, draws[1] < mask_p
    if noised.any():
        idx = noised.nonzero().flatten()
        t = torch.randint(0, t_max, (len(idx),), generator=generator, device="cpu").to(dev)
        noise = torch.randn((len(idx), *x.shape[1:]), generator=generator, device="cpu").to(dev, x.dtype)
        x = x.clone()
        x[idx.to(dev)] = q_sample(x[idx.to(dev)], t, noise)
    if not masked.any():
        return x, y, None
    y = y.clone()
    keep = torch.ones(n, 1, *x.shape[2:], device=dev, dtype=x.dtype)
    for i in masked.nonzero().flatten().tolist():
        present = torch.unique(y[i])
        present = present[present != ignore_index]
        if len(present) == 0:
            continue
        c = present[torch.randint(len(present), (1,), generator=generator, device="cpu").item()]
        region = y[i] == c
        keep[i, 0] = region.to(x.dtype)
        y[i][~region] = ignore_index
    return x, y, keep
