"""Class names, palettes and label-id tables, all in one place.

Conventions used across ``dasslab``:

* A label map holds *train ids* ``0 .. K-1``; :data:`IGNORE_INDEX` (255) marks
  pixels that are scored and trained on by nobody (GTA5 void, classes a source
  lacks, padding).
* Raw dataset ids (Cityscapes label ids, SYNTHIA ids) are mapped to train ids
  with a lookup table built by :func:`lookup_table`; every id that the table
  does not mention becomes 255, so an unknown id is never silently mislabeled.

The id -> trainId tables are the ones of the public converters (docs/method.md §6).
"""

from __future__ import annotations

import colorsys

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

#: The standard Cityscapes colours, row i = colour of train id i.
CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
        (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)
CITYSCAPES_PALETTE.setflags(write=False)

#: Cityscapes label id -> train id (used for Cityscapes ``*_labelIds.png`` and GTA5 labels).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

#: SYNTHIA-RAND-CITYSCAPES class id -> Cityscapes train id.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9,
    1: 10, 10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

#: Train ids scored by SYNTHIA -> Cityscapes mIoU-16 (no terrain, truck, train).
SYNTHIA_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
#: mIoU-13: mIoU-16 without wall (3), fence (4) and pole (5).
SYNTHIA_13: tuple[int, ...] = tuple(c for c in SYNTHIA_16 if c not in (3, 4, 5))


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Return a ``uint8`` lookup table of length ``size`` for ``lut[raw_id] -> train id``.

    Every id not in ``mapping`` maps to :data:`IGNORE_INDEX`. Use ``size=65536``
    for 16-bit label files.
    """
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for raw, train in mapping.items():
        if not 0 <= raw < size:
            raise ValueError(f"lookup_table: id {raw} does not fit a table of size {size}")
        if not 0 <= train <= IGNORE_INDEX:
            raise ValueError(f"lookup_table: train id {train} for id {raw} is not in [0, 255]")
        lut[raw] = train
    return lut


def palette(num_classes: int) -> np.ndarray:
    """Return a ``(num_classes, 3) uint8`` palette.

    For 19 classes this is :data:`CITYSCAPES_PALETTE`. Otherwise colours are
    spread around the hue circle by the golden ratio with three saturation /
    value levels: deterministic, pairwise distinct and never black (black is
    reserved for the ignore label in :func:`colorize`).
    """
    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_PALETTE.copy()
    if not 0 < num_classes <= IGNORE_INDEX:
        raise ValueError(f"palette: num_classes must be in [1, 255], got {num_classes}")
    out, seen = [], set()
    i = 0
    while len(out) < num_classes:
        hue = (i * 0.618033988749895) % 1.0
        sat = (0.9, 0.6, 0.75)[i % 3]
        val = (0.95, 0.8, 0.65)[(i // 3) % 3]
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
        if rgb not in seen:
            seen.add(rgb)
            out.append(rgb)
        i += 1
    return np.array(out, dtype=np.uint8)


def colorize(label, num_classes: int | None = None, colors: np.ndarray | None = None) -> np.ndarray:
    """Render an ``HxW`` label map (numpy or torch) as an ``HxWx3 uint8`` image.

    ``colors`` (``Kx3``) overrides the palette; otherwise ``palette(num_classes)``
    is used, ``num_classes`` defaulting to 19 (Cityscapes colours) unless the
    label holds larger ids. :data:`IGNORE_INDEX` is drawn black.
    """
    if hasattr(label, "detach"):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"colorize: expected an HxW label map, got shape {label.shape}")
    label = label.astype(np.int64)
    valid = label != IGNORE_INDEX
    if colors is None:
        top = int(label[valid].max()) + 1 if valid.any() else 0
        if num_classes is None:
            num_classes = max(len(CITYSCAPES_CLASSES), top)
        colors = palette(num_classes)
    colors = np.asarray(colors, dtype=np.uint8)
    if valid.any() and (label[valid].min() < 0 or label[valid].max() >= len(colors)):
        raise ValueError(f"colorize: label values outside [0, {len(colors)}) and not {IGNORE_INDEX}")
    if len(colors) > IGNORE_INDEX:
        raise ValueError(f"colorize: at most {IGNORE_INDEX} colours (255 is the ignore label), got {len(colors)}")
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = colors
    return table[np.where(valid, label, IGNORE_INDEX)]
