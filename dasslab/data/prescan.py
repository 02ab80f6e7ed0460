"""Pre-scan: check every split a run will read before it trains (docs/method.md §8: bad input fails early).

A corrupt or mislabeled file used to be found only when a loader reached it: a corrupt
target-val image failed *after* training, a corrupt source image in a short run was never
noticed. :func:`prescan` opens every sample of the splits a run reads (the stage's training
domains and the evaluation split, honouring ``data.limit_train`` / ``data.limit_val``) and
checks, per split:

* existence and pairing (building the dataset: root, folders, image/label stems, not empty),
  and that its class list matches ``dataset.num_classes`` (``classes.txt`` mismatch);
* files in its folders that the loader does not read (a ``.gif`` among the images, a text file):
  named, not silently left out (:func:`check_ignored`);
* decodability of every image and label (``data.prescan=full``: every pixel decoded, so a
  truncated PNG/JPEG is caught; ``headers``: images only opened and CRC-verified, labels
  still decoded since their values are checked);
* contents, not names (:mod:`dasslab.data.formats`): every header is read before its file is decoded and a
  file over the pixel cap (``data.max_pixels``) is refused; a label must hold PNG bytes (JPEG or WebP bytes
  under a ``.png`` name are refused, naming what they hold); images whose content is another format than
  their extension names are counted and the first is named in the summary (they are read all the same);
* label values within ``[0, num_classes)`` or 255;
* sizes: how many labels differ in size from their image (they are nearest-resized when
  loaded: the count docs/reference.md promises) and how many distinct image sizes there are.

All bad samples of a split are counted; the error names the first file and the count, on
one line. Files are read by a small thread pool (the decoders release the GIL). A split
already scanned in this process whose files are unchanged (same paths, sizes and mtimes)
is not read again, so a pipeline that runs several stages pays once.

:func:`run_check` is the ``stage=check`` entry (``conf/stage/check.yaml``): it scans every
configured dataset entry and writes ``prescan.json`` into the run directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from dasslab.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATASET_KEYS = ("source", "source_val", "target", "target_train_labeled", "target_val")
MODES = ("full", "headers", "off")
_scanned: dict[str, "SplitScan"] = {}  # in-process memo: files' signature -> scan of an unchanged split


@dataclass
class SplitScan:
    """What the pre-scan found in one dataset entry (``dataset.<key>``)."""

    key: str
    samples: int
    labels: int
    images_read: int
    labels_read: int
    label_resized: int
    image_sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count (the 5 most common)
    other_format: int = 0          # images whose content is another format than their extension names
    other_format_first: str = ""   # the first of them: "<path> holds JPEG data, not the PNG …"

    def line(self) -> str:
        sizes = ", ".join(f"{s} x{n}" for s, n in self.image_sizes.items())
        return (f"dataset.{self.key}: {self.samples} images, {self.labels} labels"
                f"{f', {self.label_resized} labels resized to their image' if self.label_resized else ''}"
                f" ({sizes}){self.format_note()}")

    def format_note(self) -> str:
        if not self.other_format:
            return ""
        return (f"; {self.other_format} images of dataset.{self.key} hold another format than their extension "
                f"names (read by content all the same; first: {self.other_format_first})")


@dataclass
class PrescanReport:
    """The pre-scan of a run: one :class:`SplitScan` per split, the mode and the time it took."""

    splits: list[SplitScan]
    mode: str
    seconds: float

    @property
    def images(self) -> int:
        return sum(s.samples for s in self.splits)

    @property
    def label_resized(self) -> int:
        return sum(s.label_resized for s in self.splits)

    def summary(self) -> str:
        """One line: what was checked, how many files, how long."""
        read = sum(s.images_read + s.labels_read for s in self.splits)
        keys = ", ".join(f"{s.key} {s.samples}" for s in self.splits)
        resized = f"; {self.label_resized} labels differ in size from their image" if self.label_resized else ""
        formats = "".join(s.format_note() for s in self.splits)
        return (f"pre-scan ({self.mode}): {len(self.splits)} splits OK ({keys}); {read} files read in "
                f"{self.seconds:.1f} s{resized}{formats}")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "seconds": self.seconds, "images": self.images,
                "label_resized": self.label_resized, "splits": [asdict(s) for s in self.splits]}


def _entry_keys(cfg: DictConfig) -> list[str]:
    """The dataset entries configured for this dataset (``dataset.<key>`` with a ``_target_``)."""
    d = cfg.dataset
    return [k for k in DATASET_KEYS if isinstance(d.get(k), DictConfig) and d[k].get("_target_")]


def splits_for(cfg: DictConfig) -> list[str]:
    """The dataset entries the run of ``cfg.stage`` reads.

    A stage may list them (``stage.reads: [source, target_val]``); a ``fit`` stage reads its
    ``datamodule.train_domains`` and, unless ``datamodule.val`` is false, ``eval.split``; any
    other stage (pipeline, check, …) is assumed to read every configured entry.
    """
    stage = cfg.get("stage")
    configured = _entry_keys(cfg)
    if isinstance(stage, DictConfig):
        if stage.get("reads") is not None:
            return list(stage.reads)
        dm = stage.get("datamodule")
        if stage.get("kind") == "fit" and isinstance(dm, DictConfig):
            keys = list(dm.get("train_domains") or [])
            if dm.get("val", True) and cfg.get("eval") is not None and cfg.eval.get("split"):
                keys.append(cfg.eval.split)
            return list(dict.fromkeys(keys))
    return configured


def _limit(cfg: DictConfig, key: str, train: bool) -> int | None:
    data = cfg.get("data") or {}
    return data.get("limit_train" if train else "limit_val")


def _image_size(path: str, mode: str) -> tuple[tuple[int, int], str | None]:
    """Open (``full``: decode every pixel; ``headers``: verify the file's structure) -> ((h, w), format note).

    The header is read first: an image over the pixel cap is refused before it is decoded, and one whose
    content is another format than its extension names gets a note (it is read all the same). ``full``
    decodes as the loaders do (:func:`dasslab.data.io.decode_image`).
    """
    from dasslab.data.formats import check_pixels, format_note, header
    from dasslab.data.io import decode_image, read_bytes

    data = read_bytes(path, "image")
    if mode == "full":
        img, head = decode_image(data, path)
        if head is not None and head.format == "JPEG" and b"\xff\xd9" not in data[-64:]:
            # OpenCV decodes a truncated JPEG with only a warning
            raise DataError(f"{path}: truncated JPEG (no end-of-image marker); expected a complete JPEG file")
        return img.shape[:2], format_note(path, head)
    head = header(data)
    check_pixels(path, head)
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            im.verify()
    except Exception as e:  # noqa: BLE001 - whatever PIL raises for a broken file
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e}); expected a PNG/JPEG file") from None
    return (size[1], size[0]), format_note(path, head)


def _check_sample(ds, image: str, label: str | None, mode: str, known: dict):
    """(image size, label size or None) of one sample; :class:`DataError` naming the file if bad.

    ``known`` maps images already checked (by another split) to their size and format note: not read again.
    """
    shape, note = known.get(image) or _image_size(image, mode)
    if label is None:
        return (shape, note), None
    arr = ds.read_label(label)  # decodes, checks single channel and values (per dataset: its classes)
    return (shape, note), arr.shape[:2]


def _signature(key: str, ds, mode: str) -> str:
    """Identifies a split's files as they are now (paths, sizes, mtimes): the memo's key."""
    from dasslab.data.formats import max_pixels

    h = hashlib.sha1(f"{key}|{mode}|{getattr(ds, 'num_classes', None)}|{max_pixels()}".encode())
    for image, label in getattr(ds, "samples", _base(ds).samples):
        for p in (image, label):
            if p is None:
                continue
            try:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns};".encode())
            except OSError:
                h.update(f"{p}|missing;".encode())
    return h.hexdigest()


def _base(ds):
    while not hasattr(ds, "read_label") and hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def scan_split(ds, key: str, mode: str = "full", workers: int | None = None,
               known: dict | None = None) -> SplitScan:
    """Check every sample of ``ds`` (one dataset entry); raises one :class:`DataError` with the count.

    ``known`` (image path -> size) is shared between the splits of one scan: an image that two
    entries list (``target`` and ``target_train_labeled``) is decoded once; it is updated here.
    """
    base = _base(ds)
    samples = list(getattr(ds, "samples", base.samples))
    known = {} if known is None else known
    workers = workers or min(8, os.cpu_count() or 1)
    fresh = sum(1 for i, _ in samples if i not in known)

    def check(sample):
        try:
            return _check_sample(base, sample[0], sample[1], mode, known), None
        except DataError as e:
            return None, str(e)

    if workers > 1 and len(samples) > 64:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(check, samples, chunksize=64))
    else:
        results = [check(s) for s in samples]
    errors = [err for _, err in results if err is not None]
    if errors:
        more = f" ({len(errors)} of {len(samples)} samples of dataset.{key} are bad)" if len(errors) > 1 else ""
        raise DataError(f"{errors[0]}{more}")
    known.update((i, r[0]) for (i, _), (r, _) in zip(samples, results))
    sizes = Counter(f"{s[0][0][0]}x{s[0][0][1]}" for s, _ in results)
    resized = sum(1 for ((img, _), lab), _ in results if lab is not None and tuple(lab) != tuple(img))
    notes = [f"{i} {r[0][1]}" for (i, _), (r, _) in zip(samples, results) if r[0][1]]
    labels = sum(1 for _, lab in samples if lab is not None)
    return SplitScan(key=key, samples=len(samples), labels=labels, images_read=fresh, labels_read=labels,
                     label_resized=resized, image_sizes=dict(sizes.most_common(5)), other_format=len(notes),
                     other_format_first=notes[0] if notes else "")


def check_ignored(ds, key: str) -> None:
    """Files in a split's folders that its loader does not read (``ignored_files`` of a ``folder`` domain: an
    image format it does not decode, a text file among the images) are an error naming the first, not a
    silent omission."""
    from dasslab.data.io import IMAGE_EXTENSIONS

    ignored = list(getattr(_base(ds), "ignored_files", None) or [])
    if not ignored:
        return
    first = Path(ignored[0])
    kind = "labels" if first.parent.name == "labels" else "images"
    expected = ".png" if kind == "labels" else " ".join(IMAGE_EXTENSIONS)
    more = f"; {len(ignored)} such files in dataset.{key}" if len(ignored) > 1 else ""
    raise DataError(f"{first}: not read by the loader (extension {first.suffix or 'none'!s}; {kind} are read from "
                    f"{expected}); convert it or move it out of the folder{more}")


def scan_datasets(datasets: dict, mode: str = "full", num_classes: int | None = None) -> PrescanReport:
    """Check built datasets (``{key: dataset}``); what :func:`prescan` and the datamodule's ``setup`` call."""
    if mode not in MODES:
        raise ConfigError(f"data.prescan={mode!r}: expected one of {', '.join(MODES)}")
    start = time.perf_counter()
    if mode == "off":
        return PrescanReport([], mode, 0.0)
    known: dict = {}  # image path -> size: an image listed by two entries is decoded once
    scans = []
    for key, ds in datasets.items():
        check_ignored(ds, key)
        k = getattr(ds, "num_classes", None)
        if num_classes is not None and k is not None and k != num_classes:
            raise DataError(f"dataset.{key}: {k} classes (class list of {getattr(_base(ds), 'root', '?')}) "
                            f"but dataset.num_classes={num_classes}")
        memo = _signature(key, ds, mode)
        if memo not in _scanned:
            _scanned[memo] = scan_split(ds, key, mode, known=known)
        scans.append(_scanned[memo])
    return PrescanReport(scans, mode, round(time.perf_counter() - start, 3))


def prescan(cfg: DictConfig, keys: list[str] | None = None, mode: str | None = None,
            quiet: bool = False) -> PrescanReport:
    """Check the splits ``keys`` (default: :func:`splits_for`) before a run reads them; see the module docstring.

    ``mode`` defaults to ``data.prescan`` (``full``); ``off`` returns an empty report at once.
    """
    from dasslab.data.build import build_dataset
    from dasslab.data.formats import set_max_pixels

    set_max_pixels((cfg.get("data") or {}).get("max_pixels"))
    mode = mode or (cfg.get("data") or {}).get("prescan", "full") or "off"
    if mode == "off":
        return PrescanReport([], mode, 0.0)
    start = time.perf_counter()
    keys = splits_for(cfg) if keys is None else list(keys)
    eval_split = (cfg.get("eval") or {}).get("split")
    datasets = {k: build_dataset(cfg.dataset, k, train=False, limit=_limit(cfg, k, train=k != eval_split))
                for k in keys}
    report = scan_datasets(datasets, mode, cfg.dataset.get("num_classes"))
    report.seconds = round(time.perf_counter() - start, 3)
    if not quiet:
        log.info(report.summary())
    return report


def run_check(cfg: DictConfig) -> dict:
    """``stage=check``: pre-scan every configured dataset entry; ``prescan.json`` in the run directory."""
    from dasslab.utils.io import atomic_write_text

    mode = (cfg.get("data") or {}).get("prescan") or "full"
    report = prescan(cfg, keys=_entry_keys(cfg), mode="full" if mode == "off" else mode, quiet=True)
    out = Path(cfg.paths.output_dir)
    atomic_write_text(out / "prescan.json", json.dumps(report.to_dict(), indent=2))
    print(report.summary())
    for s in report.splits:
        print(f"  {s.line()}")
    return report.to_dict()


def check_data(cfg: DictConfig, mode: str = "headers") -> tuple[PrescanReport | None, list[str]]:
    """Every configured dataset entry of ``cfg`` built and pre-scanned, collecting rather than raising: the
    report (None when an entry is missing or bad) and one line per problem, naming the setting that holds the
    folder and where it is expected (``dataset.source.root=./data/gta5: folder not found; expected …``)."""
    from dasslab.data.build import build_dataset

    problems, datasets = [], {}
    for key in _entry_keys(cfg):
        try:
            datasets[key] = build_dataset(cfg.dataset, key, train=False)
        except Exception as e:  # noqa: BLE001 - a DataError, or one wrapped by an interpolation (dataset.root)
            cause = e
            while cause is not None and not isinstance(cause, DataError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            if str(cause) not in problems:
                problems.append(str(cause))
    if problems:
        return None, problems
    try:
        return scan_datasets(datasets, mode, cfg.dataset.get("num_classes")), []
    except DataError as e:
        return None, [str(e)]
