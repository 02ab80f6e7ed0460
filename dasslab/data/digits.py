"""The built-in digits DASS benchmark (docs/method.md §7), generated from data bundled with scikit-learn.

Scenes of 1-3 handwritten digits (``sklearn.datasets.load_digits``, 8x8 scans
upscaled with bilinear interpolation to 35-60 % of the scene side; a digit's
mask is where its upscaled intensity exceeds 0.5) in ``size x size`` images.

* **source** -- the digits drawn in one plain colour on a plain background of
  another colour (both random per scene, at least 96 grey levels apart on
  average over RGB): clean and synthetic-looking.
* **target** -- the same kind of scenes rendered MNIST-M style,
  ``|photo patch - 255 * digit intensity|`` per channel, the patch a random
  square crop (side 1-4x the scene side, area-resized) of scikit-learn's
  bundled ``china.jpg`` or ``flower.jpg``.

Classes (11): index 0 = ``"background"``, index ``d + 1`` = digit ``d``
(names ``"0"`` .. ``"9"``). Where digits overlap, the later one wins.

The benchmark is written once into a cache folder in the ``folder`` layout
(so :class:`~dasslab.data.folder.FolderDomain` reads it too)::

    ROOT/classes.txt  ROOT/meta.json
    ROOT/source/{images,labels}      n_train scenes
    ROOT/source_val/{images,labels}  n_val scenes
    ROOT/target/{images,labels}      n_train scenes (labels kept for the target oracle only)
    ROOT/target_val/{images,labels}  n_val scenes

Generation is deterministic from ``seed`` (byte-identical files); each subset
draws from its own ``numpy`` generator seeded by ``(seed, subset)``, and train
and val scenes use disjoint digit scans (80 % / 20 % of the 1797 scans).
It is atomic: files go to a temporary sibling folder that is renamed to
``ROOT`` when complete, so an interrupted run never leaves a half cache. A
cache whose recorded parameters (``meta.json``) differ is regenerated; a
non-empty ``ROOT`` that is not a digits cache is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from dasslab.utils.io import locked

from .folder import FolderDomain
from .io import DataError, write_png

GENERATOR_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))
BACKGROUND = 0
SUBSETS = {"source": 0, "source_val": 1, "target": 2, "target_val": 3}
FOLDERS = {("source", "train"): "source", ("source", "val"): "source_val",
           ("target", "train"): "target", ("target", "val"): "target_val"}


DIGIT_SCALE = (0.35, 0.6)


def _params(size: int, n_train: int, n_val: int, seed: int, digit_scale=DIGIT_SCALE) -> dict:
    p = {"generator": "dasslab.data.digits", "version": GENERATOR_VERSION,
         "size": int(size), "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed)}
    if tuple(float(v) for v in digit_scale) != DIGIT_SCALE:  # recorded only when not the default
        p["digit_scale"] = [float(v) for v in digit_scale]
    return p


def _compose(rng: np.random.Generator, scans: np.ndarray, targets: np.ndarray, size: int,
             digit_scale=DIGIT_SCALE):
    """Place 1-3 digits; return (intensity HxW float32 in [0, 1], label HxW uint8)."""
    alpha = np.zeros((size, size), np.float32)
    label = np.full((size, size), BACKGROUND, np.uint8)
    lo, hi = max(8, round(digit_scale[0] * size)), max(8, round(digit_scale[1] * size))
    for _ in range(rng.integers(1, 4)):
        k = rng.integers(len(scans))
        side = int(rng.integers(lo, hi + 1))
        digit = cv2.resize(scans[k], (side, side), interpolation=cv2.INTER_LINEAR)
        mask = digit > 0.5
        if not mask.any():
            continue
        for _try in range(10):  # avoid covering more than 20 % of an earlier digit
            y, x = rng.integers(0, size - side + 1, size=2)
            window = label[y:y + side, x:x + side]
            if (window[mask] != BACKGROUND).mean() <= 0.2:
                break
        else:
            continue
        window[mask] = targets[k] + 1
        np.maximum(alpha[y:y + side, x:x + side], digit, out=alpha[y:y + side, x:x + side])
    return alpha, label


def _render_source(rng, alpha):
    while True:
        bg, fg = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        if np.abs(bg - fg).mean() >= 96:
            break
    img = bg + (fg - bg) * alpha[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _render_target(rng, alpha, photos):
    size = alpha.shape[0]
    photo = photos[rng.integers(len(photos))]
    side = int(rng.integers(size, 4 * size + 1))
    y = rng.integers(0, photo.shape[0] - side + 1)
    x = rng.integers(0, photo.shape[1] - side + 1)
    patch = cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    img = np.abs(patch.astype(np.float32) - 255.0 * alpha[..., None])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _generate(out: Path, params: dict) -> None:
    from sklearn.datasets import load_digits, load_sample_image

    data = load_digits()
    scans = (data.images / 16.0).astype(np.float32)
    order = np.random.default_rng(params["seed"]).permutation(len(scans))
    cut = int(0.8 * len(scans))
    pools = {"train": order[:cut], "val": order[cut:]}
    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    size = params["size"]
    fractions = {}
    for folder, subset_id in SUBSETS.items():
        rng = np.random.default_rng([params["seed"], subset_id])
        idx = pools["val" if folder.endswith("_val") else "train"]
        pool_scans, pool_targets = scans[idx], data.target[idx]
        n = params["n_val" if folder.endswith("_val") else "n_train"]
        (out / folder / "images").mkdir(parents=True)
        (out / folder / "labels").mkdir()
        counts = np.zeros(len(CLASS_NAMES), np.int64)
        for i in range(n):
            alpha, label = _compose(rng, pool_scans, pool_targets, size, params.get("digit_scale", DIGIT_SCALE))
            if folder.startswith("source"):
                img = _render_source(rng, alpha)
            else:
                img = _render_target(rng, alpha, photos)
            write_png(out / folder / "images" / f"{i:05d}.png", img)
            write_png(out / folder / "labels" / f"{i:05d}.png", label)
            counts += np.bincount(label.ravel(), minlength=len(CLASS_NAMES))
        fractions[folder] = [round(float(c), 6) for c in counts / max(1, counts.sum())]
    (out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    meta = dict(params, class_names=list(CLASS_NAMES), class_fraction=fractions)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def read_meta(root) -> dict | None:
    """Return the cache's ``meta.json`` (parameters and per-folder class pixel fractions), or None."""
    try:
        return json.loads((Path(root) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(root: Path, params: dict) -> bool:
    meta = read_meta(root)
    return meta is not None and all(meta.get(k) == v for k, v in params.items())


def make_digits(root, size: int = 32, n_train: int = 3000, n_val: int = 600, seed: int = 0,
                digit_scale=DIGIT_SCALE) -> Path:
    """Generate the digits benchmark into ``root`` unless a cache with these parameters is there.

    Returns ``Path(root)``. See the module docstring for the layout and guarantees.
    """
    root = Path(root).expanduser()
    if size < 16:
        raise DataError(f"dataset.size={size}: digits scenes need size >= 16")
    if n_train < 1 or n_val < 1:
        raise DataError(f"digits n_train={n_train}, n_val={n_val}: expected at least 1 scene each")
    if not 0 < float(digit_scale[0]) <= float(digit_scale[1]) <= 1:
        raise DataError(f"dataset.generate.digit_scale={list(digit_scale)}: expected 0 < lo <= hi <= 1 "
                        "(digit side as a fraction of the scene side)")
    params = _params(size, n_train, n_val, seed, digit_scale)
    if _matches(root, params):
        return root
    if root.exists() and read_meta(root) is None and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"dataset.root={root}: exists and is not a digits cache (no meta.json); "
                        "expected an empty or missing folder to generate the benchmark into")
    root.parent.mkdir(parents=True, exist_ok=True)
    # processes that want the cache at once (a pipeline's parallel jobs): one generates, the others wait here
    # and then read its files -- none swaps the folder while another reads it
    with locked(root.parent / f".{root.name}.lock"):
        if _matches(root, params):
            return root
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = root.parent / f".{root.name}.tmp-{tag}"
        try:
            _generate(tmp, params)
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


class Digits(FolderDomain):
    """One split of the digits benchmark, generated into ``root`` on first use.

    Args:
        root: cache folder.
        domain: ``"source"`` or ``"target"``.
        split: ``"train"`` or ``"val"``.
        transform: albumentations transform or None.
        size, n_train, n_val, seed: generation parameters (a differing cache is regenerated).
        digit_scale: (lo, hi) range of a digit's side as a fraction of the scene side.
        labels: load labels; default everywhere except target train (set True for the target oracle).
    """

    GENERATED = True   # its files are a function of the generation settings (dasslab.provenance)

    def __init__(self, root, domain: str = "source", split: str = "train", transform=None,
                 size: int = 32, n_train: int = 3000, n_val: int = 600, seed: int = 0, *,
                 labels: bool | None = None, digit_scale=DIGIT_SCALE):
        if (domain, split) not in FOLDERS:
            raise DataError(f"digits domain={domain!r} split={split!r}: expected domain 'source'|'target' "
                            "and split 'train'|'val'")
        root = make_digits(root, size=size, n_train=n_train, n_val=n_val, seed=seed, digit_scale=digit_scale)
        if labels is None:
            labels = (domain, split) != ("target", "train")
        super().__init__(root, FOLDERS[(domain, split)], transform, labels=labels)
        self.meta = read_meta(root)
