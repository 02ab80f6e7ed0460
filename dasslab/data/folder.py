"""Bring-your-own domains: the ``dataset=folder`` layout of docs/method.md §5.

::

    ROOT/classes.txt                 one class name per line; line i = class index i
    ROOT/source/images/*.png|jpg     ROOT/source/labels/*.png   (uint8 class index, 255 = ignore)
                                     (images may also be .bmp .tif .tiff .webp)
    ROOT/target/images/*.png|jpg     (unlabeled: diffusion training and adaptation)
    ROOT/target_val/images/*         ROOT/target_val/labels/*.png

Images and labels pair by file stem; labels are PNG only. Other files in an ``images/`` or
``labels/`` folder are kept in ``ignored_files`` and reported by the pre-scan. ``classes.txt`` is
UTF-8 (with or without a byte-order mark) or UTF-16 with a byte-order mark. Any other
``ROOT/<domain>/`` folder with the same structure (e.g. ``source_val``, written by the digits benchmark) can be
read too. Label files are single-channel (or palette) PNGs whose pixel values
are class indices; a value outside ``[0, K)`` other than 255 raises
:class:`~dasslab.data.io.DataError` when the sample is loaded.

Working size (``dataset.image_size`` left at its default in ``conf/dataset/folder.yaml``):
:func:`working_size` reads the image headers of ``source``, ``target`` and ``target_val``.
When every image has one size (H, W) that is the working size; when sizes differ, the most
common size is used. Either way the size is then capped — scaled down, aspect kept, so
that its longer side is at most ``dataset.max_side`` (default 512) — and rounded down to a
multiple of ``dataset.size_multiple`` (default 8, what the diffusion UNets need). Set
``dataset.image_size=[H,W]`` to choose yourself. The OmegaConf resolver
``dasslab.folder_size`` (registered when this module is imported) exposes it to configs.
"""

from __future__ import annotations

import codecs
from collections import Counter
from pathlib import Path

from dasslab.utils.paths import link_problem

from .base import SegmentationDataset, check_root, pair_by_stem
from .io import IMAGE_EXTENSIONS, DataError, list_files, read_index_label
from .labels import IGNORE_INDEX

LAYOUT = "folder layout ROOT/classes.txt + ROOT/<domain>/images/* (+ ROOT/<domain>/labels/*.png)"
LABELED_BY_DEFAULT = {"source": True, "target": False, "target_val": True, "source_val": True}


def _decode_text(path: Path) -> str:
    """A text file as users write it: UTF-8 with or without a byte-order mark, or UTF-16 with one (what
    Windows editors save as "Unicode"); anything else is one :class:`DataError` line naming the byte."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: damaged UTF-16 text ({e.reason} at byte {e.start}); expected one class name "
                            f"per line, saved as UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 1].hex()
        raise DataError(f"{path}: not UTF-8 text (byte 0x{bad} at position {e.start}, e.g. Latin-1 or cp1252); "
                        f"expected one class name per line, saved as UTF-8") from None


def read_classes(path) -> list[str]:
    """Read ``classes.txt``: one name per line, trailing blank lines ignored.

    UTF-8 (a byte-order mark is dropped) or UTF-16 with a byte-order mark; Windows line ends are fine."""
    path = Path(path)
    if not path.is_file():
        problem = link_problem(path) or "classes file not found"
        raise DataError(f"{path}: {problem}; expected one class name per line (line i = class i)")
    text = _decode_text(path)
    if "\x00" in text:
        raise DataError(f"{path}: holds NUL characters (UTF-16 without a byte-order mark?); expected one class "
                        f"name per line, saved as UTF-8")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise DataError(f"{path}: no class names; expected one class name per line")
    if "" in names:
        raise DataError(f"{path}: line {names.index('') + 1} is blank; expected one class name per line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class name {dup!r} appears twice; expected distinct names")
    if len(names) > IGNORE_INDEX:
        raise DataError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} (255 is the ignore label)")
    return names


class FolderDomain(SegmentationDataset):
    """One domain of a ``folder`` dataset.

    Args:
        root: the dataset root (holds ``classes.txt`` and the domain folders).
        domain: ``"source"``, ``"target"``, ``"target_val"`` (or another folder name, e.g. ``"source_val"``).
        transform: albumentations transform or None.
        classes_file: class list to use instead of ``ROOT/classes.txt``.
        labels: load labels (every image must then have one); default: yes except for ``target``.
        setting: config key named in error messages.
    """

    def __init__(self, root, domain: str = "source", transform=None, classes_file=None, *,
                 labels: bool | None = None, setting: str = "dataset.root"):
        root = check_root(root, setting, LAYOUT)
        class_names = read_classes(classes_file if classes_file is not None else root / "classes.txt")
        img_dir = root / domain / "images"
        if not img_dir.is_dir():
            raise DataError(f"{setting}={root}: no {domain}/images/ folder; expected the {LAYOUT}")
        if labels is None:
            labels = LABELED_BY_DEFAULT.get(domain, (root / domain / "labels").is_dir())
        skipped: list[Path] = []          # files the loader does not read: the pre-scan reports them
        images = list_files(img_dir, skipped=skipped)
        if not images and not skipped:
            raise DataError(f"{setting}={root}: {domain}/images/ holds no images; expected image files "
                            f"({' '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
        if labels:
            lab_dir = root / domain / "labels"
            if not lab_dir.is_dir():
                raise DataError(f"{setting}={root}: no {domain}/labels/ folder; expected label PNGs "
                                f"paired by stem with {domain}/images/ (or pass labels=False)")
            label_files = list_files(lab_dir, (".png",), skipped=skipped)
            for other in skipped:          # a label saved in another format: say so, not "has no label"
                if other.parent == lab_dir and other.stem in images and other.stem not in label_files:
                    raise DataError(f"{other}: a label saved as {other.suffix}; labels are read only as PNG "
                                    f"(lossless: JPEG changes class indices); expected {lab_dir}/{other.stem}.png")
            samples = pair_by_stem(images, label_files, f"{lab_dir}/<stem>.png", f"{img_dir}/<stem>.png|jpg|…")
        else:
            samples = [(p, None) for p in images.values()]
        self.domain = domain
        self.ignored_files = skipped
        super().__init__(
            samples,
            read_index_label,
            class_names,
            transform,
            split=domain,
            root=root,
            expected=f"{domain}/images/*.png|jpg under {root}",
        )


def image_sizes(root, domains=("source", "target", "target_val")) -> Counter:
    """Count the (H, W) sizes of the images under ``ROOT/<domain>/images`` (headers only)."""
    from PIL import Image

    sizes: Counter = Counter()
    for domain in domains:
        folder = Path(root) / domain / "images"
        if not folder.is_dir():
            continue
        for path in list_files(folder).values():
            try:
                with Image.open(path) as im:
                    w, h = im.size
            except OSError as e:
                raise DataError(f"{path}: not a readable image ({e}); expected PNG/JPEG files") from None
            sizes[(h, w)] += 1
    return sizes


def working_size(root, max_side: int = 512, multiple: int = 8) -> list[int]:
    """``[H, W]`` for a folder pair: its common (or most common) image size, capped and rounded.

    See the module docstring. Raises :class:`DataError` when ``root`` holds no images.
    """
    root = check_root(root, "dataset.root", LAYOUT)
    sizes = image_sizes(root)
    if not sizes:
        raise DataError(f"dataset.root={root}: no images under source/, target/ or target_val/; "
                        f"expected the {LAYOUT}")
    (h, w), _ = sizes.most_common(1)[0]
    scale = min(1.0, int(max_side) / max(h, w))
    m = max(1, int(multiple))
    return [max(m, int(h * scale) // m * m), max(m, int(w * scale) // m * m)]

