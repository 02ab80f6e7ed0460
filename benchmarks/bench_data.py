"""Data-loading throughput benchmark -> ``benchmarks/results/data.json``.

What is measured (samples per second through a ``torch.utils.data.DataLoader``
with ``num_workers`` = 0 and 2, timed from the second batch on so that worker
start-up is reported separately as ``first_batch_s``):

* **digits** -- the built-in benchmark (docs/method.md §7): source train scenes, 32x32,
  no transform, batch 64. Also the time to generate the cache.
* **gta5** -- a generated GTA5-format tree (smooth random RGB images and 8-bit
  *palette* label PNGs of Cityscapes ids, at GTA5's 1914x1052), read by
  :class:`~dasslab.data.GTA5` with ``build_transform(train=True,
  resize=(512, 1024))`` (bilinear image / nearest label resize + random flip),
  batch 2. A per-stage breakdown (image decode, label decode + LUT, transform,
  tensor conversion; ms per sample, main process) shows where the time goes.

Ratios within one run (``speedup_2_vs_0``) are comparable across machines;
absolute rates are for this machine only (recorded under ``machine``).

Usage: ``python benchmarks/bench_data.py [--quick] [--device cuda] [--out PATH]``.
``--quick`` uses fewer samples (a smoke run in a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dasslab.data import GTA5, Digits, make_digits
from dasslab.data.base import to_tensors
from dasslab.data.io import read_image
from dasslab.data.transforms import build_transform

GTA_SIZE = (1052, 1914)  # (h, w)
GTA_IDS = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 0, 1])


def loader_rate(dataset, batch_size: int, workers: int, n_samples: int, device: str = "cpu") -> dict:
    """Iterate ``n_samples`` (cycling epochs); return samples/s after the first batch.

    On CUDA the loader pins memory and every batch's tensors are copied to the device (non-blocking,
    synchronised before the clock stops), as in training.
    """
    cuda = torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=cuda,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    seen, t0, t_first = 0, time.perf_counter(), None
    while seen < n_samples:
        for batch in loader:
            if cuda:
                _ = [v.to(device, non_blocking=True) for v in batch.values() if isinstance(v, torch.Tensor)]
            seen += len(batch["name"])
            if t_first is None:
                t_first, seen_first = time.perf_counter(), seen
            if seen >= n_samples:
                break
    if cuda:
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    timed = seen - seen_first
    return {"workers": workers, "batch_size": batch_size, "samples": seen,
            "first_batch_s": round(t_first - t0, 3),
            "samples_per_s": round(timed / max(t1 - t_first, 1e-9), 2) if timed else None}


def make_gta5_tree(root: Path, n: int) -> Path:
    """Write ``n`` GTA5-format samples (1914x1052 RGB PNG + palette label PNG)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    h, w = GTA_SIZE
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8).ravel().tolist()
    for i in range(n):
        coarse = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:05d}.png"), img)
        blocks = GTA_IDS[rng.integers(0, len(GTA_IDS), (h // 64 + 1, w // 64 + 1))].astype(np.uint8)
        lab = Image.fromarray(cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST))
        lab.putpalette(palette)
        lab.save(root / "labels" / f"{i:05d}.png")
    return root


def stage_times(ds: GTA5, n: int) -> dict:
    """Mean ms per sample of each loading stage, in this process."""
    acc = {"image_decode": 0.0, "label_decode": 0.0, "transform": 0.0, "to_tensor": 0.0}
    for i in range(n):
        img_p, lab_p = ds.samples[i % len(ds)]
        t0 = time.perf_counter()
        img = read_image(img_p)
        t1 = time.perf_counter()
        lab = ds.load_label(lab_p, img.shape[:2])
        t2 = time.perf_counter()
        out = ds.transform(image=img, mask=lab)
        t3 = time.perf_counter()
        to_tensors(out["image"], out["mask"])
        t4 = time.perf_counter()
        for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            acc[k] += dt
    return {k: round(1000 * v / n, 2) for k, v in acc.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (smoke test)")
    ap.add_argument("--device", default="cpu", help="where batches go: cpu, or cuda (pinned memory + copy)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "data.json"))
    args = ap.parse_args(argv)
    quick = args.quick
    result = {
        "benchmark": "data", "quick": quick, "device": args.device,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "load_avg_1min_at_start": round(os.getloadavg()[0], 2)},
    }
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        tmp = Path(tmp)
        n_train = 600 if quick else 3000
        t0 = time.perf_counter()
        make_digits(tmp / "digits", n_train=n_train, n_val=100 if quick else 600)
        gen_s = time.perf_counter() - t0
        ds = Digits(tmp / "digits", "source", "train", n_train=n_train, n_val=100 if quick else 600)
        runs = [loader_rate(ds, 64, w, 1000 if quick else 6000, args.device) for w in (0, 2)]
        result["digits"] = {"size": 32, "n_train": n_train, "generate_s": round(gen_s, 3), "loaders": runs,
                            "speedup_2_vs_0": _ratio(runs)}
        print(f"digits: generated in {gen_s:.2f} s; " + _fmt(runs), flush=True)

        n_img = 4 if quick else 12
        t0 = time.perf_counter()
        root = make_gta5_tree(tmp / "gta5", n_img)
        ds = GTA5(root, transform=build_transform(True, resize=(512, 1024), seed=0))
        runs = [loader_rate(ds, 2, w, 8 if quick else 48, args.device) for w in (0, 2)]
        result["gta5"] = {"source_size_hw": list(GTA_SIZE), "resize_hw": [512, 1024], "images": n_img,
                          "tree_write_s": round(time.perf_counter() - t0, 2), "loaders": runs,
                          "speedup_2_vs_0": _ratio(runs), "stage_ms_per_sample": stage_times(ds, n_img)}
        print("gta5 1914x1052 -> 512x1024: " + _fmt(runs), flush=True)
        print(f"gta5 stages (ms/sample): {result['gta5']['stage_ms_per_sample']}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def _ratio(runs):
    a, b = runs[0]["samples_per_s"], runs[1]["samples_per_s"]
    return round(b / a, 3) if a and b else None


def _fmt(runs):
    return ", ".join(f"{r['workers']} workers: {r['samples_per_s']} samples/s" for r in runs)


if __name__ == "__main__":
    main()
