"""GTA5 (Richter et al. 2016) as a source domain.

Layout: ``ROOT/images/NNNNN.png`` and ``ROOT/labels/NNNNN.png`` (1914x1052).
Labels are 8-bit *palette* PNGs whose pixel index is the Cityscapes label id;
they are read with PIL as indices (OpenCV would return the palette colours) and
mapped to the 19 Cityscapes train ids, every other id -> 255.

GTA5 has no official split. ``split="all"`` (the paper's use) takes every
image; ``"train"`` / ``"val"`` use :func:`~dasslab.data.base.hash_split`
(``crc32(stem) % 100 < val_percent`` -> val, default 10 %), which is stable
under missing files.
"""

from __future__ import annotations

import functools

from .base import SegmentationDataset, check_root, hash_split, pair_by_stem
from .io import DataError, list_files, read_index_label
from .labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID, lookup_table

LAYOUT = "GTA5 layout images/NNNNN.png + labels/NNNNN.png"


class GTA5(SegmentationDataset):
    """GTA5 images with Cityscapes train-id labels (19 classes).

    Args:
        root: dataset folder (``images/``, ``labels/``).
        split: ``"all"``, ``"train"`` or ``"val"`` (see module docstring).
        transform: albumentations transform or None.
        setting: config key named in error messages.
        val_percent: share of stems in ``val``.
    """

    def __init__(self, root, split: str = "all", transform=None, *,
                 setting: str = "dataset.source.root", val_percent: int = 10):
        root = check_root(root, setting, LAYOUT)
        for sub in ("images", "labels"):
            if not (root / sub).is_dir():
                raise DataError(f"{setting}={root}: no {sub}/ folder; expected the {LAYOUT}")
        images = list_files(root / "images", (".png", ".jpg"))
        labels = list_files(root / "labels", (".png",))
        every = set(images)
        keep = hash_split(list(images), split, val_percent)
        images = {s: images[s] for s in keep}
        samples = pair_by_stem(images, labels, f"{root / 'labels'}/<stem>.png",
                               f"{root / 'images'}/<stem>.png|jpg", all_images=every)
        super().__init__(
            samples,
            functools.partial(read_index_label, lut=lookup_table(CITYSCAPES_ID_TO_TRAINID)),
            CITYSCAPES_CLASSES,
            transform,
            split=split,
            root=root,
            expected=f"images/*.png under {root} (the {LAYOUT})",
        )
