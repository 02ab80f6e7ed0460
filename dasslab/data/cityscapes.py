"""Cityscapes (Cordts et al. 2016) as the target domain.

Layout: ``ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png`` with labels
``ROOT/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png`` when present
(produced by cityscapesScripts' ``createTrainIdLabelImgs``), otherwise
``<frame>_gtFine_labelIds.png`` mapped to train ids by the lookup table.
``labels=False`` gives the unlabeled target-train set used for diffusion
training and adaptation (``gtFine/`` is then not needed).
"""

from __future__ import annotations

import os

from .base import SegmentationDataset, check_root
from .io import DataError, read_index_label
from .labels import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAINID, lookup_table

LAYOUT = ("Cityscapes layout leftImg8bit/<split>/<city>/*_leftImg8bit.png "
          "+ gtFine/<split>/<city>/*_gtFine_labelIds.png")
_IMG_SUFFIX = "_leftImg8bit.png"
_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)


def decode_cityscapes_label(path: str):
    """Read ``*_labelTrainIds.png`` as is, or ``*_labelIds.png`` mapped to train ids."""
    if str(path).endswith("_labelTrainIds.png"):
        return read_index_label(path)
    return read_index_label(path, lut=_LUT)


class Cityscapes(SegmentationDataset):
    """Cityscapes frames with 19-class train-id labels (or none with ``labels=False``).

    Args:
        root: dataset folder (``leftImg8bit/``, ``gtFine/``).
        split: ``"train"``, ``"val"`` (or ``"test"`` with ``labels=False``).
        transform: albumentations transform or None.
        labels: load labels (every image must have one) or not.
        setting: config key named in error messages.
    """

    def __init__(self, root, split: str = "train", transform=None, *, labels: bool = True,
                 setting: str = "dataset.target.root"):
        root = check_root(root, setting, LAYOUT)
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise DataError(f"{setting}={root}: no leftImg8bit/{split}/ folder; expected the {LAYOUT}")
        gt_dir = root / "gtFine" / split
        if labels and not gt_dir.is_dir():
            raise DataError(f"{setting}={root}: no gtFine/{split}/ folder; expected the {LAYOUT} "
                            "(or use labels=False for unlabeled target images)")
        samples = []
        for city in sorted(e.name for e in os.scandir(img_dir) if e.is_dir()):
            names = sorted(f for f in os.listdir(img_dir / city) if f.endswith(_IMG_SUFFIX))
            for fname in names:
                image = img_dir / city / fname
                label = None
                if labels:
                    frame = fname[: -len(_IMG_SUFFIX)]
                    train_ids = gt_dir / city / f"{frame}_gtFine_labelTrainIds.png"
                    label_ids = gt_dir / city / f"{frame}_gtFine_labelIds.png"
                    label = train_ids if train_ids.is_file() else label_ids if label_ids.is_file() else None
                    if label is None:
                        raise DataError(f"{image}: image has no label (expected {label_ids} "
                                        "or *_gtFine_labelTrainIds.png)")
                samples.append((image, label))
        super().__init__(
            samples,
            decode_cityscapes_label,
            CITYSCAPES_CLASSES,
            transform,
            split=split,
            root=root,
            expected=f"leftImg8bit/{split}/<city>/*{_IMG_SUFFIX} (the {LAYOUT})",
        )
