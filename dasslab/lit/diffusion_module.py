"""The target diffusion model (Sec. 4.1, Eq. 5) as a LightningModule.

An unconditional eps-prediction DDPM trained on unlabeled *target* images only.
The EMA of the weights (used for sampling and translation) is kept by the stage's
:class:`~dasslab.callbacks.ema.WarmupEMA` callback (Lightning's ``EMAWeightAveraging`` with
a warmed-up decay), which also writes the averaged weights into the checkpoint's
``state_dict`` — later stages load that checkpoint by path.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L
import torch

from dasslab.diffusion.sampler import Sampler
from dasslab.diffusion.schedule import NoiseSchedule
from dasslab.diffusion.unet import Denoiser


class DiffusionModule(L.LightningModule):
    def __init__(self, preset: str, image_size: Sequence[int], num_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, lr: float = 2e-5,
                 adam_betas: Sequence[float] = (0.9, 0.99), in_channels: int = 3,
                 unet_overrides: dict | None = None, train_key: str = "target") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.denoiser = Denoiser.build(tuple(image_size), in_channels, preset, **(unet_overrides or {}))
        self.schedule = NoiseSchedule.linear(num_timesteps, beta_start, beta_end)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = batch[self.hparams.train_key]["image"]
        loss = self.schedule.training_loss(self.denoiser, x0)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.denoiser.parameters(), lr=self.hparams.lr,
                                betas=tuple(self.hparams.adam_betas))

    def sampler(self, progress: bool = False, **options) -> Sampler:
        """The reverse process of this model; ``options``: ``sampler_options(cfg.diffusion, device)``."""
        return Sampler(self.schedule, self.denoiser, progress=progress, **options)

    def check_data(self, shape: Sequence[int], what: str = "the data") -> None:
        """Raise a ValueError naming the mismatch if images of ``shape`` don't fit this model."""
        try:
            self.denoiser.check_input(tuple(shape))
        except ValueError as e:
            raise ValueError(f"diffusion checkpoint (built for {self.hparams.in_channels}-channel "
                             f"{tuple(self.hparams.image_size)} images) does not fit {what}: {e}") from None

