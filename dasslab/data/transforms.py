"""Albumentations pipelines for segmentation (albumentations 2.0.8 API).

Images are ``HxWx3 uint8`` and labels are passed as ``mask`` (``HxW uint8``,
255 = ignore). Images are resized bilinearly, labels with nearest neighbour;
crop padding fills the image with 0 and the label with 255 (ignored). The
``[-1, 1]`` scaling is *not* part of the transform: the dataset applies it
afterwards, so the diffusion model and the segmenter share one convention.

Randomness. Albumentations draws from the pipeline's own generator, never from the
global seeds, so a run is reproducible only if every pipeline is seeded:
:func:`seed_transforms` seeds the pipelines of a dataset in the main process (from the
run seed and the rank), and :func:`seed_worker` (a DataLoader ``worker_init_fn``) reseeds
each worker's copy from the worker's seed, which PyTorch derives from the loader's
seeded generator (``base_seed + worker_id``). Without it every worker would replay the
same augmentations.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

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


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from integers (run seed, rank, worker seed...) with ``np.random.SeedSequence``."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(1)[0])


def _transforms_of(dataset):
    """Every ``transform`` reachable from ``dataset`` (through ``Subset`` / ``ConcatDataset`` wrappers)."""
    seen, stack = set(), [dataset]
    while stack:
        ds = stack.pop()
        if id(ds) in seen:
            continue
        seen.add(id(ds))
        tf = getattr(ds, "transform", None)
        if tf is not None and hasattr(tf, "set_random_seed"):
            yield tf
        inner = getattr(ds, "dataset", None)
        if inner is not None:
            stack.append(inner)
        stack.extend(getattr(ds, "datasets", None) or [])


def seed_transforms(dataset, seed: int) -> int:
    """Seed every albumentations pipeline of ``dataset``; returns how many were seeded."""
    n = 0
    for tf in _transforms_of(dataset):
        tf.set_random_seed(int(seed))
        n += 1
    return n


def process_rank() -> int:
    """This process's global rank as Lightning sees it (0 outside distributed runs)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's worker seeding plus this worker's own augmentation seed."""
    import torch
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, derive_seed(info.seed, process_rank()))
