"""Sample grids of the target diffusion model, saved as PNG and logged."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from dasslab.visualize import grid, log_image, save_png, to_uint8


class DiffusionSampleGrid(L.Callback):
    """Every ``every_n_steps`` (and at the end), sample ``num_images`` unconditional images
    with ``num_steps`` respaced reverse steps from the EMA weights when an EMA callback runs."""

    def __init__(self, out_dir: str, every_n_steps: int = 1000, num_images: int = 16, num_steps: int = 50,
                 seed: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.every = int(every_n_steps)
        self.num_images = num_images
        self.num_steps = num_steps
        self.seed = seed

    def _denoiser(self, trainer, pl_module):
        for cb in trainer.callbacks:
            if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
                return cb._average_model.module.denoiser
        return pl_module.denoiser

    @torch.no_grad()
    def _save(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        from dasslab.diffusion.sampler import Sampler

        den = self._denoiser(trainer, pl_module)
        was_training = den.training
        den.eval()
        h, w = pl_module.hparams.image_size
        g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = Sampler(pl_module.schedule, den).sample((self.num_images, pl_module.hparams.in_channels, h, w),
                                                     num_steps=self.num_steps, generator=g, device=pl_module.device)
        den.train(was_training)
        imgs = list(to_uint8(x))
        ncol = max(1, int(len(imgs) ** 0.5))
        rows = [imgs[i:i + ncol] for i in range(0, len(imgs), ncol)]
        pic = grid(rows, scale=max(1, 64 // max(h, 1)))
        save_png(self.out_dir / f"samples_step{trainer.global_step:07d}.png", pic)
        log_image(trainer, "diffusion/samples", pic, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.global_step > 0:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)
