"""Datasets, label tables and transforms of ``dasslab`` (no model code is imported here).

* :mod:`.labels` -- class names, palettes, id -> trainId tables.
* :mod:`.base` -- :class:`SegmentationDataset` (item = ``image`` in [-1, 1], ``label``, ``name``)
  and :class:`DataError`.
* Paper datasets: :class:`GTA5`, :class:`Synthia`, :class:`Cityscapes`.
* Your own domains: :class:`FolderDomain`; the built-in benchmark: :class:`Digits`, :func:`make_digits`.
* :func:`build_transform` (imported lazily: albumentations is slow to import).
"""

from .base import DataError, DataWarning, SegmentationDataset
from .cityscapes import Cityscapes
from .digits import Digits, make_digits
from .folder import FolderDomain, read_classes
from .gta5 import GTA5
from .labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    SYNTHIA_13,
    SYNTHIA_16,
    SYNTHIA_ID_TO_TRAINID,
    colorize,
    lookup_table,
    palette,
)
from .synthia import Synthia

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAINID",
    "CITYSCAPES_PALETTE",
    "GTA5",
    "IGNORE_INDEX",
    "SYNTHIA_13",
    "SYNTHIA_16",
    "SYNTHIA_ID_TO_TRAINID",
    "Cityscapes",
    "DataError",
    "DataWarning",
    "Digits",
    "FolderDomain",
    "SegmentationDataset",
    "Synthia",
    "build_transform",
    "colorize",
    "lookup_table",
    "make_digits",
    "palette",
    "read_classes",
]


def __getattr__(name):
    if name == "build_transform":
        from .transforms import build_transform

        return build_transform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
