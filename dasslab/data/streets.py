"""The built-in ``streets`` pair: GTA5 -> Cityscapes' regime at 32 or 64 px, generated from scikit-learn's photos.

Labels are large regions and their layout, as in street scenes; the shift between the domains is appearance
only (texture, blur, noise, colour cast), as between a game engine's renders and a car camera's frames:

* **layout** (one per scene, the same distribution in both domains): a horizon at 35-55 % of the height; sky
  above it; a skyline of buildings standing on the horizon (some gaps) with trees in front of it; below it a
  road in perspective (a trapezoid towards a vanishing point), sidewalks on both sides, vegetation (grass,
  hedges) beyond them, and 0-3 cars on the road, sized by their distance.
* **source** (rendered): every class one flat colour jittered per scene, smooth vertical shading, crisp edges,
  regular window grids on the buildings; no texture, no noise.
* **target** (photographed): every region textured from a random crop of scikit-learn's bundled ``china.jpg``
  or ``flower.jpg``, desaturated and tinted towards its class's duller colour; then a per-image colour cast
  and exposure, a camera blur and sensor noise.

Classes (6): road, sidewalk, building, vegetation, sky, car. The layout, seeding and atomic caching are those
of every built-in pair (:mod:`dasslab.data.generated`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .generated import GeneratedDomain, layout_pair, make_pair, photo_patch

__all__ = ["CLASS_NAMES", "Streets", "make_streets"]

GENERATOR_VERSION = 1
CLASS_NAMES: tuple[str, ...] = ("road", "sidewalk", "building", "vegetation", "sky", "car")
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR = range(6)

# the rendered look: clean, saturated colours (RGB)
SOURCE_COLOURS = np.array([[96, 96, 104], [176, 160, 150], [190, 150, 110], [60, 170, 70], [90, 150, 235],
                           [200, 40, 40]], np.float32)
# the photographed look: each class's duller colour, towards which its photo texture is tinted
TARGET_COLOURS = np.array([[70, 68, 72], [140, 132, 128], [120, 112, 104], [88, 108, 60], [190, 200, 210],
                           [60, 62, 80]], np.float32)


def layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """One street-scene label map (size x size, uint8 class indices)."""
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    label = np.full((S, S), SKY, np.uint8)
    h = S * rng.uniform(0.35, 0.55)                       # horizon
    # buildings on the horizon: a skyline of blocks, some gaps
    x = -S * rng.uniform(0, 0.2)
    while x < S:
        w = S * rng.uniform(0.12, 0.35)
        if rng.random() > 0.2:
            top = h - S * rng.uniform(0.08, 0.4)
            label[(xx >= x) & (xx < x + w) & (yy >= top) & (yy < h + S * 0.02)] = BUILDING
        x += w
    # trees in front of the buildings: ellipses standing on the horizon
    for _ in range(rng.integers(0, 4)):
        cx, r = S * rng.uniform(0, 1), S * rng.uniform(0.06, 0.16)
        cy = h - r * rng.uniform(0.3, 1.0)
        label[((xx - cx) / r) ** 2 + ((yy - cy) / (1.2 * r)) ** 2 <= 1] = VEGETATION
    # the ground: vegetation beyond the sidewalks, sidewalks, the road towards a vanishing point
    ground = yy >= h
    label[ground] = VEGETATION
    vx = S * rng.uniform(0.35, 0.65)
    depth = np.clip((yy - h) / max(S - h, 1.0), 0, None)          # 0 at the horizon, 1 at the bottom row
    left, right = S * rng.uniform(-0.35, 0.15), S * rng.uniform(0.85, 1.35)
    walk = S * rng.uniform(0.12, 0.3)
    road_l, road_r = vx + (left - vx) * depth, vx + (right - vx) * depth
    label[ground & (xx >= road_l - walk * depth) & (xx <= road_r + walk * depth)] = SIDEWALK
    label[ground & (xx >= road_l) & (xx <= road_r)] = ROAD
    # cars on the road, sized by their distance (perspective)
    for _ in range(rng.integers(0, 4)):
        d = rng.uniform(0.25, 0.95)
        y1 = h + d * (S - h)
        ch = max(2.0, S * 0.28 * d)
        cw = ch * rng.uniform(1.3, 2.0)
        lo, hi = vx + (left - vx) * d, vx + (right - vx) * d
        cx = rng.uniform(lo, max(lo, hi - cw))
        label[(xx >= cx) & (xx < cx + cw) & (yy >= y1 - ch) & (yy < y1)] = CAR
    return label


def render_source(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """Flat jittered class colours, vertical shading, window grids on buildings: a clean render (uint8 RGB)."""
    S = label.shape[0]
    colours = SOURCE_COLOURS + rng.uniform(-25, 25, size=SOURCE_COLOURS.shape).astype(np.float32)
    colours[CAR] = rng.uniform(30, 230, size=3)                  # cars come in any colour
    img = colours[label]
    shade = 1.0 + 0.15 * (np.linspace(-1, 1, S, dtype=np.float32)[:, None, None])
    img = img * shade
    period = max(3, S // 10)
    yy, xx = np.mgrid[0:S, 0:S]
    windows = (label == BUILDING) & (yy % period < period // 2) & (xx % period < period // 2)
    img[windows] *= 0.55
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_target(rng: np.random.Generator, label: np.ndarray, pictures) -> np.ndarray:
    """Photo textures tinted per class, colour cast, exposure, blur and sensor noise: a camera frame (uint8 RGB)."""
    S = label.shape[0]
    img = np.zeros((S, S, 3), np.float32)
    for c in np.unique(label):
        tex = photo_patch(rng, pictures, S, S, zoom=(0.5, 2))
        grey = tex.mean(axis=2, keepdims=True)
        tex = 0.35 * tex + 0.65 * grey                           # desaturated
        tint = TARGET_COLOURS[c] + rng.uniform(-15, 15, size=3)
        region = tint + (tex - tex.mean()) * 0.6                 # the class's colour, the photo's texture
        mask = label == c
        img[mask] = region[mask]
    cast = rng.uniform(0.85, 1.15, size=3).astype(np.float32)    # white balance
    img = img * cast * rng.uniform(0.8, 1.15)                    # exposure
    sigma = rng.uniform(0.3, 0.8) * S / 32
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma)
    img = img + rng.normal(0, rng.uniform(3, 8), size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


_generate = layout_pair(CLASS_NAMES, layout, lambda rng, label, _pictures: render_source(rng, label), render_target)


def make_streets(root, size: int = 32, n_train: int = 3000, n_val: int = 600, n_test: int = 600,
                 seed: int = 0) -> Path:
    """Generate the streets pair into ``root`` unless a cache with these parameters is there."""
    return make_pair(root, "dasslab.data.streets", GENERATOR_VERSION, _generate, size, n_train, n_val, n_test, seed)


class Streets(GeneratedDomain):
    """One split of the streets pair (see the module docstring), generated into ``root`` on first use."""

    make = staticmethod(make_streets)
