"""Diffusion core: the DDPM schedule (Eq. 2, 4, 5), the denoiser U-Net, and the reverse loop (phi^n, SGG hook).

Knows nothing of segmentation or Lightning.  Conventions: 0-based timesteps ``t ∈ {0..T-1}``
(``t = 0`` is the paper's step 1), images in ``[-1, 1]``.
"""

from .sampler import GuidanceFn, Sampler
from .schedule import NoiseSchedule, domain_timestep, spaced_steps
from .unet import PRESETS, Denoiser, build_unet

__all__ = [
    "PRESETS",
    "Denoiser",
    "GuidanceFn",
    "NoiseSchedule",
    "Sampler",
    "build_unet",
    "domain_timestep",
    "spaced_steps",
]
