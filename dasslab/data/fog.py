"""The built-in ``fog`` pair: clear -> fog at dusk, a shift that removes detail, on shapes told apart by geometry.

It differs from both other pairs on purpose. Digits adds texture to thin strokes and streets adds texture,
blur and noise to large regions: there the target images carry more high-frequency energy than the source's.
Here the target carries less (ACDC / Foggy Cityscapes' direction): a translation that keeps the source's
detail, or adds noise, is wrong, and a calibration must move the other way. The classes are mid-size objects
whose class is their outline alone (not their colour, texture or place).

* **scene** (both domains): 2-4 filled shapes -- disc, square, triangle -- of 25-50 % of the side, anywhere
  (the later one wins where they overlap), on a background.
* **source** (clear): background and each shape textured with random crops of scikit-learn's bundled
  ``china.jpg`` / ``flower.jpg`` at full contrast, each shape's crop tinted by a random colour.
* **target** (fog at dusk): the same kind of render, then a blur, the contrast pulled towards a bluish-grey
  fog (25-45 % of it left), a darker exposure and a little sensor noise.

Classes (4): background, disc, square, triangle. The layout, seeding and atomic caching are those of every
built-in pair (:mod:`dasslab.data.generated`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .generated import GeneratedDomain, layout_pair, make_pair, photo_patch

__all__ = ["CLASS_NAMES", "Fog", "make_fog"]

GENERATOR_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("background", "disc", "square", "triangle")
BACKGROUND, DISC, SQUARE, TRIANGLE = range(4)


def layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """2-4 shapes on a background: the label map (size x size, uint8)."""
    S = size
    label = np.zeros((S, S), np.uint8)
    for _ in range(rng.integers(2, 5)):
        c = int(rng.integers(1, 4))
        side = S * rng.uniform(0.25, 0.5)
        cx, cy = rng.uniform(side / 2, S - side / 2, size=2)
        mask = np.zeros((S, S), np.uint8)
        if c == DISC:
            cv2.circle(mask, (int(round(cx)), int(round(cy))), max(2, int(round(side / 2))), 1, -1)
        else:
            angle = rng.uniform(0, 2 * np.pi)
            k = 4 if c == SQUARE else 3
            r = side / 2 * (1.3 if c == TRIANGLE else 1.25)
            pts = [(cx + r * np.cos(angle + 2 * np.pi * i / k), cy + r * np.sin(angle + 2 * np.pi * i / k))
                   for i in range(k)]
            cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1)
        label[mask.astype(bool)] = c
    return label


def render_clear(rng: np.random.Generator, label: np.ndarray, pictures) -> np.ndarray:
    """Background and shapes textured from photo crops at full contrast (float32 RGB in [0, 255])."""
    S = label.shape[0]
    img = photo_patch(rng, pictures, S, S, zoom=(1, 3))
    for c in range(1, len(CLASS_NAMES)):
        mask = label == c
        if mask.any():
            tex = photo_patch(rng, pictures, S, S, zoom=(0.5, 2)) * rng.uniform(0.5, 1.3, size=3)
            img[mask] = tex[mask]
    return img.astype(np.float32)


def render_fog(rng: np.random.Generator, label: np.ndarray, pictures) -> np.ndarray:
    """The clear render under fog at dusk: blur, contrast towards a bluish-grey fog, darker, a little noise."""
    S = label.shape[0]
    img = cv2.GaussianBlur(render_clear(rng, label, pictures), (0, 0), sigmaX=rng.uniform(0.6, 1.2) * S / 32)
    fog = np.array([150, 160, 178], np.float32) * rng.uniform(0.9, 1.1)
    keep = rng.uniform(0.25, 0.45)
    img = (fog + keep * (img - fog)) * rng.uniform(0.55, 0.85)
    return img + rng.normal(0, rng.uniform(1, 3), size=img.shape).astype(np.float32)


def _uint8(render):
    return lambda rng, label, pictures: np.clip(np.rint(render(rng, label, pictures)), 0, 255).astype(np.uint8)


_generate = layout_pair(CLASS_NAMES, layout, _uint8(render_clear), _uint8(render_fog))


def make_fog(root, size: int = 32, n_train: int = 3000, n_val: int = 600, n_test: int = 600,
             seed: int = 0) -> Path:
    """Generate the fog pair into ``root`` unless a cache with these parameters is there."""
    return make_pair(root, "dasslab.data.fog", GENERATOR_VERSION, _generate, size, n_train, n_val, n_test, seed)


class Fog(GeneratedDomain):
    """One split of the fog pair (see the module docstring), generated into ``root`` on first use."""

    make = staticmethod(make_fog)
