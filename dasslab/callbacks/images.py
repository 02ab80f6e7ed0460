"""Sample grids of the target diffusion model, saved as PNG and logged."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from dasslab.visualize import grid, log_image, save_figure, save_png, to_uint8


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


# --------------------------------------------------------------------------- PTL (Sec. 4.3)
def save_miou_curve(path, curve: list[dict], trainer=None) -> Path:
    """The mIoU-over-n curve of a PTL run (``curve``: ``{"n", "miou"[, "pool"]}`` items) as PNG, also logged.

    When entries carry ``pool`` statistics (``ptl.watch``) a second panel shows what each domain
    trained on: label consistency (%), domain score x 100 and hf / hf_target (right axis)."""
    from dasslab.visualize import save_curve

    pooled = [c for c in curve if c.get("pool")]
    if not pooled:
        path = save_curve(path, [c["n"] for c in curve], {"target val mIoU": [c["miou"] for c in curve]},
                          xlabel="domain n (0 = source model)", ylabel="mIoU (%)", title="PTL: mIoU over domains")
    else:
        path = _save_miou_and_pool_panels(Path(path), curve, pooled)
    if trainer is not None:
        import numpy as np
        from PIL import Image

        log_image(trainer, "ptl/miou_over_n", np.asarray(Image.open(path).convert("RGB")), step=trainer.global_step)
    return path


def _save_miou_and_pool_panels(path: Path, curve: list[dict], pooled: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), dpi=120, sharex=True)
    top.plot([c["n"] for c in curve], [c["miou"] for c in curve], marker="o", label="target val mIoU")
    top.set_ylabel("mIoU (%)")
    top.set_title("PTL: mIoU over domains")
    ns = [c["n"] for c in pooled]
    series = {"consistency (fg mIoU %)": ("consistency", 1.0), "consistency, all classes (%)": ("consistency_all", 1.0),
              "domain score x 100": ("domain_score", 100.0)}
    lines = []
    for label, (key, scale) in series.items():
        if all(key in c["pool"] for c in pooled):
            lines += bottom.plot(ns, [scale * c["pool"][key] for c in pooled], marker="o", label=label)
    bottom.set_ylabel("%")
    bottom.set_title("what each domain trained on (ptl.watch)", fontsize=9)
    right = bottom.twinx()
    ratio = [c["pool"]["hf"] / c["pool"]["hf_target"] if c["pool"].get("hf_target") else float("nan") for c in pooled]
    lines += right.plot(ns, ratio, marker="s", linestyle="--", color="k", label="hf / hf_target")
    right.axhline(1.0, color="k", alpha=0.3, linewidth=0.8)
    right.set_ylabel("hf / hf_target")
    bottom.set_xlabel("domain n (0 = source model)")
    bottom.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend()
    fig.tight_layout()
    return save_figure(fig, path)


class DomainGrid(L.Callback):
    """Fig. 4-style grid: one source image translated in domains n = 1 … N by that domain's guide.

    At the first iteration of every ``every_domains``-th domain (and of the last), rank 0 translates
    the same source image (the first of the source set, fixed augmentation, fixed noise per depth) with
    the domain's guide g_{n-1}; the columns (source, then each n) go to ``ptl_domains.png`` in
    ``out_dir`` and to the loggers. The columns are kept in the checkpoint."""

    def __init__(self, out_dir: str, every_domains: int = 0, index: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.every = int(every_domains)
        self.index = int(index)
        self.columns: list[tuple[int, torch.Tensor]] = []   # (n, uint8 HxWx3)

    def _example(self, trainer) -> dict:
        from torch.utils.data import default_collate

        stream = trainer.datamodule.stream()
        return default_collate([stream.items[(self.index, 0)]])

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.every or not trainer.is_global_zero or not getattr(pl_module, "translates", False):
            return
        sched = pl_module.domains
        step = trainer.global_step - 1           # the iteration that just ran
        n = sched.domain(step)
        if step != sched.start(step) or any(c[0] == n for c in self.columns):
            return
        if (n - 1) % self.every and n != sched.N:
            return
        ex = self._example(trainer)
        tr = pl_module.translate(ex["image"], ex["label"], n, chunk=0, seed=pl_module.hparams.seed)
        if not self.columns:
            self.columns.append((0, torch.from_numpy(to_uint8(ex["image"][0]))))
        self.columns.append((n, torch.from_numpy(to_uint8(tr.images[0]))))
        self._save(trainer)

    def _save(self, trainer) -> None:
        imgs = [c[1].numpy() for c in self.columns]
        titles = ["source" if n == 0 else f"n={n}" for n, _ in self.columns]
        pic = grid([imgs], titles=titles, scale=max(1, 64 // imgs[0].shape[0]))
        save_png(self.out_dir / "ptl_domains.png", pic)
        log_image(trainer, "ptl/domains", pic, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"columns": [(n, img) for n, img in self.columns]}

    def load_state_dict(self, state: dict) -> None:
        self.columns = [(int(n), img) for n, img in state.get("columns", [])]
