"""The built-in domain pairs (digits, streets, fog): generated once into a cache folder, read as ``folder`` data.

Every pair is written by a generator function ``generate(out, params)`` into the ``folder`` layout with
five subsets, each drawn from its own ``numpy`` generator seeded by ``(seed, subset)``::

    ROOT/classes.txt  ROOT/meta.json
    ROOT/source/{images,labels}        n_train scenes  (labelled source: training)
    ROOT/source_val/{images,labels}    n_val scenes
    ROOT/target/{images,labels}        n_train scenes  (labels read only by the oracle, the ceiling and the judge)
    ROOT/target_val/{images,labels}    n_val scenes    (for choosing anything)
    ROOT/target_test/{images,labels}   n_test scenes   (for reporting only)

Generation is deterministic from its parameters (byte-identical files) and atomic: files go to a temporary
sibling folder that is renamed to ``ROOT`` when complete, so an interrupted run never leaves a half cache.
A cache whose recorded parameters (``meta.json``) differ is regenerated; a non-empty ``ROOT`` that is not
such a cache is never overwritten. Processes that want one cache at once serialise on a file lock: one
generates, the others wait and read its files.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dasslab.utils.io import locked

from .folder import FolderDomain
from .io import DataError, write_png

SUBSETS = {"source": 0, "source_val": 1, "target": 2, "target_val": 3, "target_test": 4}
FOLDERS = {("source", "train"): "source", ("source", "val"): "source_val",
           ("target", "train"): "target", ("target", "val"): "target_val", ("target", "test"): "target_test"}


def subset_size(params: dict, folder: str) -> int:
    """How many scenes subset ``folder`` holds: ``n_train`` (source, target), ``n_val``, ``n_test``."""
    if folder.endswith("_val"):
        return int(params["n_val"])
    if folder.endswith("_test"):
        return int(params["n_test"])
    return int(params["n_train"])


def subset_rng(params: dict, folder: str) -> np.random.Generator:
    """The generator of one subset: seeded by (seed, subset id), so subsets never share a draw."""
    return np.random.default_rng([int(params["seed"]), SUBSETS[folder]])


def write_subsets(out: Path, params: dict, class_names, scene: Callable) -> None:
    """Write every subset: ``scene(rng, folder, i) -> (image HxWx3 uint8, label HxW uint8)`` for each index;
    then ``classes.txt`` and ``meta.json`` (the parameters, class names and each subset's class pixel fractions)."""
    fractions = {}
    for folder in SUBSETS:
        rng = subset_rng(params, folder)
        (out / folder / "images").mkdir(parents=True)
        (out / folder / "labels").mkdir()
        counts = np.zeros(len(class_names), np.int64)
        for i in range(subset_size(params, folder)):
            img, label = scene(rng, folder, i)
            write_png(out / folder / "images" / f"{i:05d}.png", img)
            write_png(out / folder / "labels" / f"{i:05d}.png", label)
            counts += np.bincount(label.ravel(), minlength=len(class_names))[: len(class_names)]
        fractions[folder] = [round(float(c), 6) for c in counts / max(1, counts.sum())]
    (out / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    meta = dict(params, class_names=list(class_names), class_fraction=fractions)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def layout_pair(class_names, layout: Callable, render_source: Callable, render_target: Callable) -> Callable:
    """The generator of a pair whose scenes are a label layout rendered two ways: ``layout(rng, size)`` -> label,
    ``render_*(rng, label, pictures)`` -> uint8 RGB image (``pictures``: :func:`photos`)."""
    def generate(out: Path, params: dict) -> None:
        pictures, size = photos(), int(params["size"])

        def scene(rng, folder, _i):
            label = layout(rng, size)
            render = render_source if folder.startswith("source") else render_target
            return render(rng, label, pictures), label

        write_subsets(out, params, class_names, scene)

    return generate


def read_meta(root) -> dict | None:
    """Return the cache's ``meta.json`` (parameters and per-folder class pixel fractions), or None."""
    try:
        return json.loads((Path(root) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(root: Path, params: dict) -> bool:
    meta = read_meta(root)
    return meta is not None and all(meta.get(k) == v for k, v in params.items())


def check_counts(size: int, n_train: int, n_val: int, n_test: int, min_size: int = 16) -> None:
    """One line for a generation setting out of range."""
    if size < min_size:
        raise DataError(f"dataset.generate.size={size}: generated scenes need size >= {min_size}")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 1:
            raise DataError(f"dataset.generate.{key}={n}: expected at least 1 scene")


def make_pair(root, generator: str, version: int, generate: Callable[[Path, dict], None], size: int, n_train: int,
              n_val: int, n_test: int, seed: int, **extra) -> Path:
    """Check the generation settings, then :func:`make_generated` with them as the cache's parameters
    (``extra``: a generator's own settings, recorded too)."""
    check_counts(size, n_train, n_val, n_test)
    params = {"generator": generator, "version": int(version), "size": int(size), "n_train": int(n_train),
              "n_val": int(n_val), "n_test": int(n_test), "seed": int(seed), **extra}
    return make_generated(root, params, generate)


def make_generated(root, params: dict, generate: Callable[[Path, dict], None]) -> Path:
    """Generate a pair into ``root`` with ``generate(out, params)`` unless a cache with ``params`` is there."""
    root = Path(root).expanduser()
    if _matches(root, params):
        return root
    if root.exists() and read_meta(root) is None and (not root.is_dir() or any(root.iterdir())):
        what = str(params.get("generator", "")).rsplit(".", 1)[-1] or "generated"
        raise DataError(f"dataset.root={root}: exists and is not a {what} cache (no meta.json); "
                        "expected an empty or missing folder to generate the pair into")
    root.parent.mkdir(parents=True, exist_ok=True)
    # processes that want the cache at once (a pipeline's parallel jobs): one generates, the others wait here
    # and then read its files -- none swaps the folder while another reads it
    with locked(root.parent / f".{root.name}.lock"):
        if _matches(root, params):
            return root
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = root.parent / f".{root.name}.tmp-{tag}"
        try:
            generate(tmp, params)
            old = None
            if root.exists():
                old = root.parent / f".{root.name}.old-{tag}"
                os.replace(root, old)
            os.replace(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def photos() -> list[np.ndarray]:
    """scikit-learn's two bundled photographs (``china.jpg``, ``flower.jpg``), RGB uint8: the texture source."""
    from sklearn.datasets import load_sample_image

    return [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]


def photo_patch(rng: np.random.Generator, pictures, height: int, width: int, zoom=(1, 4)) -> np.ndarray:
    """A random crop of one of ``pictures``, ``zoom`` x the requested size, area-resized to (height, width): float32."""
    import cv2

    photo = pictures[rng.integers(len(pictures))]
    f = float(rng.uniform(*zoom))
    h = min(photo.shape[0], max(2, int(round(height * f))))
    w = min(photo.shape[1], max(2, int(round(width * f))))
    y = rng.integers(0, photo.shape[0] - h + 1)
    x = rng.integers(0, photo.shape[1] - w + 1)
    return cv2.resize(photo[y:y + h, x:x + w], (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)


class GeneratedDomain(FolderDomain):
    """One split of a generated pair (``make(root, **settings)`` writes it on first use; a differing cache is
    regenerated).

    ``domain``: ``"source"`` or ``"target"``; ``split``: ``"train"``, ``"val"`` or (target only) ``"test"``.
    ``labels``: load labels; default everywhere except target train (set True for the oracle, the ceiling,
    the judge). ``settings``: the generation settings (size, n_train, n_val, n_test, seed, …). Subclasses set
    ``make`` (a function of ``root`` and the generation settings).
    """

    GENERATED = True   # its files are a function of the generation settings (dasslab.provenance)
    make: Callable[..., Path]

    def __init__(self, root, domain: str = "source", split: str = "train", transform=None, *,
                 labels: bool | None = None, **settings):
        if (domain, split) not in FOLDERS:
            raise DataError(f"{type(self).__name__.lower()} domain={domain!r} split={split!r}: expected domain "
                            "'source' (split 'train'|'val') or 'target' (split 'train'|'val'|'test')")
        root = type(self).make(root, **settings)
        if labels is None:
            labels = (domain, split) != ("target", "train")
        super().__init__(root, FOLDERS[(domain, split)], transform, labels=labels)
        self.meta = read_meta(root)
