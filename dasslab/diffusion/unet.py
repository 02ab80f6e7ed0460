"""The denoiser ``eps_theta(x_t, t)``: a diffusers ``UNet2DModel`` in a thin wrapper.

Only the network lives here; the schedule is in :mod:`dasslab.diffusion.schedule` and the reverse
loop in :mod:`dasslab.diffusion.sampler`.

Presets
-------
``"ddpm_paper"``
    DDPM's 256-px model (Ho et al. 2020, the LSUN/CelebA-HQ layout, ~113.7 M parameters):
    base width 128 with channel multipliers (1, 1, 2, 2, 4, 4) → ``block_out_channels``
    (128, 128, 256, 256, 512, 512), two residual blocks per level, self-attention at the fifth
    level, whose resolution is 16 px for a 256-px input (and in the middle block), sinusoidal
    timestep embedding as in DDPM (``flip_sin_to_cos=False, freq_shift=1``), asymmetric-padding
    downsampling.  The configuration matches the public ``google/ddpm-*-256`` checkpoints.
    The network is fully convolutional (attention is over all positions of a level), so it runs
    on any input whose height and width are divisible by 32 — e.g. 256x512 Cityscapes crops, at
    which the attention level is 16x32.
``"small"``
    ~1.1 M parameters for 32x32 CPU work: widths (32, 64, 64), one residual block per level,
    attention at the lowest level (8 px for 32-px inputs) and in the middle block.
    Inputs must be divisible by 4.

Any ``UNet2DModel`` argument can be overridden through ``build_unet(..., **overrides)``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

__all__ = ["PRESETS", "Denoiser", "build_unet"]


PRESETS: dict[str, dict[str, Any]] = {
    "ddpm_paper": {
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": (
            "DownBlock2D",  # 256
            "DownBlock2D",  # 128
            "DownBlock2D",  # 64
            "DownBlock2D",  # 32
            "AttnDownBlock2D",  # 16  (attention at 16 px for a 256-px input)
            "DownBlock2D",  # 8
        ),
        "up_block_types": (
            "UpBlock2D",  # 8
            "AttnUpBlock2D",  # 16
            "UpBlock2D",  # 32
            "UpBlock2D",  # 64
            "UpBlock2D",  # 128
            "UpBlock2D",  # 256
        ),
        "attention_head_dim": None,  # one head over all channels, as in DDPM
        "norm_num_groups": 32,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "dropout": 0.0,
    },
    "small": {
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "norm_num_groups": 8,
        "norm_eps": 1e-6,
        "dropout": 0.0,
    },
}


def _as_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, int | float) and not isinstance(image_size, bool):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(
                f"image_size must be an int or a (height, width) pair, got {image_size!r}"
            ) from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {(h, w)}")
    return h, w


def build_unet(
    image_size: int | tuple[int, int],
    in_channels: int = 3,
    preset: str = "small",
    **overrides: Any,
) -> UNet2DModel:
    """Build an eps-prediction ``UNet2DModel`` from a named preset (see the module docstring).

    ``image_size`` (int or ``(H, W)``) is recorded as the model's ``sample_size``; it does not
    change the layout.  ``out_channels`` equals ``in_channels`` unless overridden.
    """
    if preset not in PRESETS:
        raise ValueError(f"build_unet: unknown preset {preset!r}; available presets: {sorted(PRESETS)}")
    h, w = _as_hw(image_size)
    in_channels = int(in_channels)
    if in_channels < 1:
        raise ValueError(f"build_unet: in_channels must be >= 1, got {in_channels}")
    kwargs: dict[str, Any] = dict(PRESETS[preset])
    kwargs.update(
        sample_size=h if h == w else (h, w),
        in_channels=in_channels,
        out_channels=in_channels,
    )
    kwargs.update(overrides)
    n_levels = len(kwargs["block_out_channels"])
    for key in ("down_block_types", "up_block_types"):
        if len(kwargs[key]) != n_levels:
            raise ValueError(
                f"build_unet: {key} has {len(kwargs[key])} entries but block_out_channels has {n_levels}; "
                f"override both together"
            )
    factor = 2 ** (n_levels - 1)
    if h % factor or w % factor:
        raise ValueError(
            f"build_unet: image_size {(h, w)} is not divisible by {factor} "
            f"(preset {preset!r} has {n_levels} levels, i.e. {n_levels - 1} downsamplings)"
        )
    return UNet2DModel(**kwargs)


class Denoiser(nn.Module):
    """``eps_theta(x_t, t)``: wraps a ``UNet2DModel`` and returns the predicted noise.

    ``t`` holds *original* (training) timesteps: an int, a 0-d tensor or a LongTensor ``(N,)``.
    ``image_size`` ((H, W), the size it was built for) and ``in_channels`` are recorded so that a
    checkpoint can be checked against the data with :meth:`check_input`.
    """

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        if not isinstance(unet, UNet2DModel):
            raise TypeError(f"Denoiser wraps a diffusers UNet2DModel, got {type(unet).__name__}")
        self.unet = unet
        cfg = unet.config
        sample_size = cfg.sample_size if cfg.sample_size is not None else 0
        self.image_size: tuple[int, int] = _as_hw(sample_size) if sample_size else (0, 0)
        self.in_channels: int = int(cfg.in_channels)
        self.num_levels: int = len(cfg.block_out_channels)

    @classmethod
    def build(
        cls, image_size: int | tuple[int, int], in_channels: int = 3, preset: str = "small", **overrides: Any
    ) -> Denoiser:
        """``Denoiser(build_unet(image_size, in_channels, preset, **overrides))``."""
        return cls(build_unet(image_size, in_channels, preset, **overrides))

    @property
    def downsample_factor(self) -> int:
        """Height and width of an input must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (self.num_levels - 1)

    def check_input(self, x: Tensor | tuple[int, ...] | torch.Size) -> None:
        """Raise ``ValueError`` naming the mismatch if images of shape ``x`` (N, C, H, W) cannot be denoised.

        Accepts a tensor or a shape.  Checks the number of channels and that the spatial size is
        divisible by ``2 ** (levels - 1)``; other sizes than the training size are allowed (the
        network is fully convolutional).
        """
        shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(int(s) for s in x)
        if len(shape) != 4:
            raise ValueError(f"denoiser expects images of shape (N, C, H, W), got shape {shape}")
        _, c, h, w = shape
        if c != self.in_channels:
            raise ValueError(
                f"denoiser was built for {self.in_channels}-channel images but the input has {c} channels"
            )
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"denoiser input size {h}x{w} is not divisible by {f} "
                f"(the U-Net has {self.num_levels} levels); resize or crop to a multiple of {f}"
            )

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        self.check_input(x)
        if not isinstance(t, Tensor):
            t = torch.tensor(int(t), device=x.device, dtype=torch.long)
        return self.unet(x, t).sample

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"image_size={self.image_size}, in_channels={self.in_channels}, params={n / 1e6:.2f}M"
