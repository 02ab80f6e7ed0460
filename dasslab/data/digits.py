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

The layout, seeding and atomic caching are those of every built-in pair (:mod:`dasslab.data.generated`:
source, source_val, target, target_val, target_test). Train scenes and val/test scenes use disjoint
digit scans (80 % / 20 % of the 1797 scans); val and test scenes are distinct draws from the held-out scans.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .generated import GeneratedDomain, make_pair, photos, read_meta, write_subsets
from .io import DataError

__all__ = ["CLASS_NAMES", "Digits", "make_digits", "read_meta"]

GENERATOR_VERSION = 2      # 2: the target_test subset
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))
BACKGROUND = 0
DIGIT_SCALE = (0.35, 0.6)


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


def _render_target(rng, alpha, pictures):
    size = alpha.shape[0]
    photo = pictures[rng.integers(len(pictures))]
    side = int(rng.integers(size, 4 * size + 1))
    y = rng.integers(0, photo.shape[0] - side + 1)
    x = rng.integers(0, photo.shape[1] - side + 1)
    patch = cv2.resize(photo[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    img = np.abs(patch.astype(np.float32) - 255.0 * alpha[..., None])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _generate(out: Path, params: dict) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    scans = (data.images / 16.0).astype(np.float32)
    order = np.random.default_rng(params["seed"]).permutation(len(scans))
    cut = int(0.8 * len(scans))
    pools = {"train": order[:cut], "held_out": order[cut:]}
    pictures = photos()
    size, scale = params["size"], params.get("digit_scale", DIGIT_SCALE)

    def scene(rng, folder, _i):
        idx = pools["train" if folder in ("source", "target") else "held_out"]
        alpha, label = _compose(rng, scans[idx], data.target[idx], size, scale)
        img = _render_source(rng, alpha) if folder.startswith("source") else _render_target(rng, alpha, pictures)
        return img, label

    write_subsets(out, params, CLASS_NAMES, scene)


def make_digits(root, size: int = 32, n_train: int = 3000, n_val: int = 600, seed: int = 0,
                digit_scale=DIGIT_SCALE, n_test: int | None = None) -> Path:
    """Generate the digits benchmark into ``root`` unless a cache with these parameters is there.

    ``n_test``: target_test scenes (default ``n_val``); ``digit_scale``: (lo, hi) range of a digit's side as a
    fraction of the scene side (recorded only when not the default). Returns ``Path(root)``.
    """
    if not 0 < float(digit_scale[0]) <= float(digit_scale[1]) <= 1:
        raise DataError(f"dataset.generate.digit_scale={list(digit_scale)}: expected 0 < lo <= hi <= 1 "
                        "(digit side as a fraction of the scene side)")
    extra = {} if tuple(float(v) for v in digit_scale) == DIGIT_SCALE else {"digit_scale": [float(v) for v in
                                                                                            digit_scale]}
    return make_pair(root, "dasslab.data.digits", GENERATOR_VERSION, _generate, size, n_train, n_val,
                     n_val if n_test is None else n_test, seed, **extra)


class Digits(GeneratedDomain):
    """One split of the digits benchmark, generated into ``root`` on first use (:class:`GeneratedDomain`; its
    settings: size, n_train, n_val, n_test, seed, digit_scale)."""

    make = staticmethod(make_digits)
