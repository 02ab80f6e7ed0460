"""The target DDPM's EMA of the weights: Lightning's ``EMAWeightAveraging`` with a warmed-up decay.

A plain EMA starts from the initial weights, and at ``decay`` 0.999 after 1,200 steps they still hold
0.999^1200 = 30 % of the average: a short run's averaged denoiser is mostly its random init (the
digits DDPM sampled noise until this was fixed). The warmup the field uses (Tan & Le's EfficientNet
EMA, diffusers' ``EMAModel(use_ema_warmup)``) takes the n-th update with

    d_n = min(decay, (1 + n) / (10 + n))

so that early averages follow the model and long runs end at ``decay`` (0.9999 is reached after
~90 k updates). ``warmup: false`` is the plain EMA.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

__all__ = ["WarmupEMA", "warmup_ema_avg_fn"]


def warmup_ema_avg_fn(decay: float):
    """``avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: EMA with decay min(decay, (1+n)/(10+n))."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"diffusion.ema_decay={decay}: expected a number in [0, 1]")

    @torch.no_grad()
    def ema_update(ema_param: torch.Tensor, current_param: torch.Tensor, num_averaged) -> torch.Tensor:
        n = torch.as_tensor(num_averaged, dtype=ema_param.dtype, device=ema_param.device)
        d = torch.clamp((1 + n) / (10 + n), max=decay)        # a tensor: no host sync per parameter
        return d * ema_param + (1 - d) * current_param

    return ema_update


class WarmupEMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` whose decay warms up (module docstring); its state lives in the checkpoint."""

    def __init__(self, decay: float = 0.999, warmup: bool = True, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        if warmup:
            self._kwargs["avg_fn"] = warmup_ema_avg_fn(decay)
