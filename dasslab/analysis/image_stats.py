"""Image statistics that tell a noisy translation from a target-like one, without any network.

``high_frequency_energy`` is the mean absolute difference between neighbouring pixels (right and
down neighbours, every channel), on images in [-1, 1]. White noise left by a short reverse chain
raises it; an over-smoothed chain lowers it. It is compared with the same statistic of real target
images: a translation pool whose value is within ~20 % of the target's has the target's fine-scale
statistics (measured on digits: clean source 0.042, target scenes 0.109).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["high_frequency_energy", "relative_to"]


@torch.no_grad()
def high_frequency_energy(images: Tensor, batch_size: int = 512) -> float:
    """Mean |x[..., i, j+1] - x[..., i, j]| and |x[..., i+1, j] - x[..., i, j]| over ``images`` (N x C x H x W)."""
    if images.dim() != 4 or images.shape[-1] < 2 or images.shape[-2] < 2:
        raise ValueError(f"high_frequency_energy: expected N x C x H x W images (H, W >= 2), got {tuple(images.shape)}")
    total, count = 0.0, 0
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].float()
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs()
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs()
        total += float(dx.sum()) + float(dy.sum())
        count += dx.numel() + dy.numel()
    return total / max(count, 1)


def relative_to(value: float, reference: float) -> float:
    """``value / reference - 1``: the relative deviation of a statistic from its reference (0 = equal)."""
    return value / reference - 1.0 if reference else float("nan")
