"""Pictures people would rather look at than read: grids, overlays, curves (PNG, uint8)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dasslab.data.labels import colorize
from dasslab.utils.io import atomic_write_png


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (3,H,W) or (N,3,H,W) -> uint8 HxWx3 (or NxHxWx3).

    uint8 because W&B renders float images in [0, 1] as black."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.permute(0, 2, 3, 1).numpy() if x.dim() == 4 else x.permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, label: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label onto an image (both HxW[x3] uint8); ignore pixels stay as the image."""
    color = colorize(label, num_classes).astype(np.float32)
    out = image.astype(np.float32)
    valid = (np.asarray(label) != 255)[..., None]
    out = np.where(valid, (1 - alpha) * out + alpha * color, out)
    return out.round().clip(0, 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] | None = None, pad: int = 2,
         scale: int = 1) -> np.ndarray:
    """Tile equally sized HxWx3 uint8 images into a grid; optional column titles on top."""
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    title_h = 12 if titles else 0
    canvas = np.full((title_h + len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = np.asarray(img)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            if scale != 1:
                img = img.repeat(scale, 0).repeat(scale, 1)
            if img.shape[:2] != (h, w):
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST))
            y, x = title_h + pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = img
    if titles:
        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        for j, t in enumerate(titles):
            draw.text((pad + j * (w + pad) + 1, 0), str(t), fill=(0, 0, 0))
        canvas = np.asarray(pil)
    return canvas


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an HxWx3 uint8 image as PNG atomically."""
    return atomic_write_png(path, image)


def save_curve(path: str | Path, xs: Sequence[float], series: dict[str, Sequence[float]], xlabel: str,
               ylabel: str, title: str = "") -> Path:
    """A line plot (matplotlib, Agg) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for name, ys in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG atomically and close it (a full disk is one line naming the
    file: :func:`dasslab.utils.io.atomic_write_bytes`)."""
    import io

    import matplotlib.pyplot as plt

    from dasslab.utils.io import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def as_uint8(image) -> np.ndarray:
    """A picture as ``HxW[x3] uint8``, what W&B and TensorBoard show as it is (W&B draws float images black).

    uint8 passes through; a torch tensor is taken as images in [-1, 1] (:func:`to_uint8`); a
    float or bool array is taken as values in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return to_uint8(image) if image.dim() == 3 and image.shape[0] in (1, 3) else as_uint8(image.cpu().numpy())
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool or np.issubdtype(image.dtype, np.floating):
        return (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def log_image(trainer, key: str, image: np.ndarray, step: int | None = None) -> None:
    """Send a picture, as uint8 (:func:`as_uint8`), to every logger that takes images (W&B, TensorBoard)."""
    image = as_uint8(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    for lg in getattr(trainer, "loggers", []) or []:
        name = type(lg).__name__
        try:
            if name == "WandbLogger":
                lg.log_image(key=key, images=[image], step=step)
            elif name == "TensorBoardLogger":
                lg.experiment.add_image(key, image, global_step=step or 0, dataformats="HWC")
        except Exception as e:  # a logger failing must not kill a run
            import logging

            logging.getLogger(__name__).warning("could not log image %s to %s: %s", key, name, e)
