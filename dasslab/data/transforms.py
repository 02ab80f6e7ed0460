"""Albumentations pipelines for segmentation (albumentations 2.0.8 API).

Images are ``HxWx3 uint8`` and labels are passed as ``mask`` (``HxW uint8``,
255 = ignore). Images are resized bilinearly, labels with nearest neighbour;
crop padding fills the image with 0 and the label with 255 (ignored). The
``[-1, 1]`` scaling is *not* part of the transform: the dataset applies it
afterwards, so the diffusion model and the segmenter share one convention.
"""

from __future__ import annotations

import albumentations as A
import cv2

from .labels import IGNORE_INDEX


def build_transform(train: bool, resize: tuple[int, int] | None = None, crop: tuple[int, int] | None = None,
                    hflip: bool = True, seed: int | None = None) -> A.Compose:
    """Return the transform for training or evaluation.

    Args:
        train: training pipeline (random crop, random flip) or evaluation (resize only).
        resize: ``(h, w)`` every image is resized to first, or None to keep its size.
        crop: ``(h, w)`` random crop for training (padded with ignore if the image is smaller);
            ignored when ``train`` is False, so evaluation sees the whole (resized) image.
        hflip: random horizontal flip with p = 0.5 when training.
        seed: seed of albumentations' own random generator (None: nondeterministic).
    """
    ops = []
    if resize is not None:
        h, w = (int(v) for v in resize)
        ops.append(A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    if train and crop is not None:
        h, w = (int(v) for v in crop)
        ops.append(A.PadIfNeeded(min_height=h, min_width=w, border_mode=cv2.BORDER_CONSTANT,
                                 fill=0, fill_mask=IGNORE_INDEX))
        ops.append(A.RandomCrop(h, w))
    if train and hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    return A.Compose(ops, seed=seed)
