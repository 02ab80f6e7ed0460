"""The dataset base class shared by every segmentation dataset of ``dasslab``.

A :class:`SegmentationDataset` is a list of samples ``(image_path, label_path or
None)`` plus a *label decoder* (``path -> HxW`` array of class indices, 255 =
ignore), the class names and an optional albumentations transform. Each item is

``dict(image=float32 3xHxW in [-1, 1], label=int64 HxW, name=str)``

where ``name`` is the image file stem and ``label`` is all 255 for a sample
without a label. Scaling to ``[-1, 1]`` happens *after* the transform, so the
diffusion model and the segmenter see one convention (the segmenter normalises
internally).

Checks done on every item (docs/method.md §8: nothing silently mislabeled):

* unreadable / corrupt image or label -> :class:`DataError` naming the file;
* label values outside ``[0, num_classes)`` other than 255 -> :class:`DataError`
  naming the file, the bad values and the class count. Paper datasets map raw
  ids through a lookup table that sends unknown ids to 255, so this fires only
  for ``folder`` data, where it means ``classes.txt`` disagrees with the labels;
* label size != image size -> the label is nearest-resized to the image size,
  a :class:`DataWarning` naming the first such file is emitted once per dataset
  object, and ``dataset.stats["label_resized"]`` is incremented. ``stats`` is a
  plain per-process counter: with DataLoader workers each worker counts its own
  copy, so read it in the main process only for ``num_workers=0``.
"""

from __future__ import annotations

import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dasslab.utils.paths import link_problem

from .io import DataError, read_image
from .labels import IGNORE_INDEX

__all__ = ["DataError", "DataWarning", "SegmentationDataset", "check_root", "hash_split", "pair_by_stem", "to_tensors"]

Sample = tuple[str, "str | None"]


class DataWarning(UserWarning):
    """Recoverable dataset problem (e.g. a label resized to its image's size)."""


def check_root(root, setting: str, layout: str) -> Path:
    """Return ``Path(root)`` or raise :class:`DataError` if it is not an existing folder.

    ``setting`` is the config key that holds the root (``dataset.source.root``)
    and ``layout`` a short description of what was expected there.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        problem = link_problem(path)
        raise DataError(f"{setting}={root}: {problem or 'folder not found'}; expected the {layout}")
    return path


def pair_by_stem(images: dict, labels: dict, label_hint: str, image_hint: str = "an image with the same stem",
                 all_images=None) -> list[tuple]:
    """Pair image and label paths by stem. An image without a label, and a label without an image, raise
    :class:`DataError` naming the first and the count: neither is dropped silently. ``all_images``: the stems of
    every image of the folder when ``images`` is one split of them (a label of the other split has its image)."""
    missing = [p for s, p in images.items() if s not in labels]
    if missing:
        raise DataError(
            f"{missing[0]}: image has no label (expected {label_hint}); "
            f"{len(missing)} of {len(images)} images lack labels"
        )
    stems = images if all_images is None else all_images
    orphans = [p for s, p in labels.items() if s not in stems]
    if orphans:
        raise DataError(
            f"{orphans[0]}: label has no image (expected {image_hint}); {len(orphans)} of {len(labels)} labels "
            f"lack images; remove them or add their images"
        )
    return [(images[s], labels[s]) for s in images]


def hash_split(stems: Sequence[str], split: str, val_percent: int = 10) -> list[str]:
    """Deterministic train/val split of file stems for datasets without an official one.

    A stem goes to ``val`` when ``zlib.crc32(stem) % 100 < val_percent`` and to
    ``train`` otherwise; ``all`` keeps every stem. The assignment of a file never
    depends on which other files exist, so it survives missing or added files and
    is the same on every machine and Python version.
    """
    if split == "all":
        return list(stems)
    if split not in ("train", "val"):
        raise DataError(f"split={split!r}: unknown split; expected 'all', 'train' or 'val'")
    want_val = split == "val"
    return [s for s in stems if (zlib.crc32(s.encode()) % 100 < val_percent) == want_val]


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``HxWx3 uint8`` image -> ``3xHxW float32`` in [-1, 1]; ``HxW`` label -> ``int64``.

    Done in numpy: small torch ops in a busy process pay OpenMP thread start-up costs.
    """
    img = image.transpose(2, 0, 1).astype(np.float32)
    img *= 1.0 / 127.5
    img -= 1.0
    return torch.from_numpy(img), torch.from_numpy(np.array(label, dtype=np.int64))


class SegmentationDataset(Dataset):
    """Images with optional per-pixel labels; see the module docstring for the item format.

    Args:
        samples: ``(image_path, label_path or None)`` pairs.
        decode_label: picklable callable ``label_path -> HxW`` integer array (255 = ignore).
        class_names: names in train-id order; ``num_classes = len(class_names)``.
        transform: albumentations transform called as ``transform(image=, mask=)``, or None.
        split, root, expected: used in the error raised for an empty sample list.
    """

    def __init__(
        self,
        samples: Sequence[tuple],
        decode_label: Callable[[str], np.ndarray] | None,
        class_names: Sequence[str],
        transform: Callable | None = None,
        *,
        split: str = "all",
        root=None,
        expected: str = "image files",
    ):
        self.samples: list[Sample] = [(str(i), None if lab is None else str(lab)) for i, lab in samples]
        self.decode_label = decode_label
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.transform = transform
        self.split = split
        self.root = None if root is None else str(root)
        self.stats: Counter = Counter()
        self._warned_resize = False
        if not self.samples:
            raise DataError(
                f"{type(self).__name__} split '{split}' at {self.root}: no samples found; expected {expected}"
            )
        if not 0 < self.num_classes <= IGNORE_INDEX:
            raise DataError(f"{type(self).__name__} at {self.root}: {self.num_classes} classes; expected 1..255")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_labels(self) -> bool:
        """True if at least one sample has a label file."""
        return any(lab is not None for _, lab in self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, labels={self.has_labels})"
        )

    def read_label(self, label_path: str) -> np.ndarray:
        """Decode one label file and check it (single channel, integer values in range or 255)."""
        label = np.asarray(self.decode_label(label_path))
        if label.ndim != 2:
            raise DataError(f"{label_path}: label has shape {label.shape}; expected a single-channel HxW map")
        self._check_values(label, label_path)
        return label

    def load_label(self, label_path: str, shape: tuple[int, int]) -> np.ndarray:
        """Decode, check and (if needed) resize one label to ``shape``; returns ``HxW uint8``."""
        label = self.read_label(label_path)
        label = label.astype(np.uint8, copy=False)
        if label.shape != shape:
            if not self._warned_resize:
                self._warned_resize = True
                warnings.warn(
                    f"{label_path}: label size {label.shape[1]}x{label.shape[0]} differs from its image "
                    f"{shape[1]}x{shape[0]}; nearest-resized (further cases only counted in "
                    f"dataset.stats['label_resized'])",
                    DataWarning,
                    stacklevel=3,
                )
            self.stats["label_resized"] += 1
            label = cv2.resize(label, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return label

    def _check_values(self, label: np.ndarray, label_path: str) -> None:
        if not np.issubdtype(label.dtype, np.integer):
            raise DataError(f"{label_path}: label dtype {label.dtype}; expected integer class indices")
        k = self.num_classes
        bad = (label >= k) & (label != IGNORE_INDEX)
        if np.issubdtype(label.dtype, np.signedinteger):
            bad |= label < 0
        if bad.any():
            values = np.unique(label[bad])
            shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise DataError(
                f"{label_path}: label values {{{shown}}} outside [0, {k}) and not {IGNORE_INDEX}; "
                f"the dataset has {k} classes (does classes.txt list every class?)"
            )

    def __getitem__(self, index: int) -> dict:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        if label_path is None:
            label = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        else:
            label = self.load_label(label_path, image.shape[:2])
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            image, label = out["image"], out["mask"]
        image_t, label_t = to_tensors(image, label)
        return {"image": image_t, "label": label_t, "name": Path(image_path).stem}
