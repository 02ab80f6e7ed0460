"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016) as a source domain.

Layout: ``ROOT/RGB/NNNNNNN.png`` and ``ROOT/GT/LABELS/NNNNNNN.png`` (1280x760).
Labels are 16-bit-per-channel PNGs with the class id in the file's first
channel, read with ``cv2.imread(f, IMREAD_UNCHANGED)[:, :, -1]`` (PIL would
truncate them) and mapped to Cityscapes train ids with a 65536-entry table.

The dataset keeps all 19 Cityscapes classes (terrain, truck and train simply
never occur) so models share one head; evaluate over
:data:`~dasslab.data.labels.SYNTHIA_16` / :data:`~dasslab.data.labels.SYNTHIA_13`.
Splits as for GTA5: ``"all"`` or a ``crc32``-based ``"train"`` / ``"val"``.
"""

from __future__ import annotations

import functools

from .base import SegmentationDataset, check_root, hash_split, pair_by_stem
from .io import DataError, list_files, read_first_channel_label
from .labels import CITYSCAPES_CLASSES, SYNTHIA_13, SYNTHIA_16, SYNTHIA_ID_TO_TRAINID, lookup_table

LAYOUT = "SYNTHIA-RAND-CITYSCAPES layout RGB/NNNNNNN.png + GT/LABELS/NNNNNNN.png"


class Synthia(SegmentationDataset):
    """SYNTHIA images with Cityscapes train-id labels (19 classes, 16 scored).

    Args:
        root: dataset folder (``RGB/``, ``GT/LABELS/``).
        split: ``"all"``, ``"train"`` or ``"val"``.
        transform: albumentations transform or None.
        setting: config key named in error messages.
        val_percent: share of stems in ``val``.
    """

    eval_classes_16 = SYNTHIA_16
    eval_classes_13 = SYNTHIA_13

    def __init__(self, root, split: str = "all", transform=None, *,
                 setting: str = "dataset.source.root", val_percent: int = 10):
        root = check_root(root, setting, LAYOUT)
        for sub in ("RGB", "GT/LABELS"):
            if not (root / sub).is_dir():
                raise DataError(f"{setting}={root}: no {sub}/ folder; expected the {LAYOUT}")
        images = list_files(root / "RGB", (".png",))
        labels = list_files(root / "GT" / "LABELS", (".png",))
        every = set(images)
        keep = hash_split(list(images), split, val_percent)
        images = {s: images[s] for s in keep}
        samples = pair_by_stem(images, labels, f"{root / 'GT' / 'LABELS'}/<stem>.png",
                               f"{root / 'RGB'}/<stem>.png", all_images=every)
        super().__init__(
            samples,
            functools.partial(read_first_channel_label, lut=lookup_table(SYNTHIA_ID_TO_TRAINID, 65536)),
            CITYSCAPES_CLASSES,
            transform,
            split=split,
            root=root,
            expected=f"RGB/*.png under {root} (the {LAYOUT})",
        )
