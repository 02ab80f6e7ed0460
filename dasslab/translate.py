"""``dasslab-translate``: export translated source images phi^n(x) with their labels.

Writes, for every depth n in ``translate.depths`` (or ``translate.depth``), a
dataset in the ``folder`` layout that any model can train on::

    OUT/n0600/classes.txt
    OUT/n0600/source/images/<stem>.png     phi^n of the source image
    OUT/n0600/source/labels/<stem>.png     its (source) label
    OUT/n0600/manifest.json                settings, count, guidance shift statistics
    OUT/grid.png                           source | phi^n for each n | label   (Fig. 4)

Resumable: images are processed in fixed chunks, each with its own seed, and a
chunk whose files all exist is skipped, so a rerun after an interruption ends
with exactly the files an uninterrupted run writes. Every PNG is written to a
temporary file and renamed, so no half-written file is ever left behind.
With ``guidance=sgg|lcg_only|gsg_only`` and ``translate.guide_ckpt=…`` the
reverse steps are guided (SGG, Sec. 4.2).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from dasslab.config import CONF_DIR
from dasslab.data.datamodule import build_dataset
from dasslab.data.io import read_image
from dasslab.utils.io import atomic_write_png, atomic_write_text
from dasslab.visualize import grid, overlay, save_curve, save_png, to_uint8

log = logging.getLogger(__name__)

SPLITS = {"source": "source", "target": "target", "target_val": "target_val"}


def depth_dir(root: str | Path, depth: int) -> Path:
    return Path(root) / f"n{int(depth):04d}"


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"translate.out_dir={out}: not writable ({e.strerror or e}); "
                              f"choose a folder you can write to") from None


def chunk_seed(seed: int, depth: int, chunk: int) -> int:
    """The generator seed of one chunk: fixed by (seed, depth, chunk index) alone."""
    return (int(seed) * 1_000_003 + int(depth) * 7_919 + int(chunk)) % (2**63 - 1)


def _device(cfg: DictConfig) -> torch.device:
    want = cfg.translate.get("device", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def _guide(cfg: DictConfig, device: torch.device):
    """The guide segmenter when guidance is on (else None)."""
    g = cfg.get("guidance")
    if g is None or g.get("name", "none") == "none" or float(g.get("scale", 0)) == 0:
        return None
    path = cfg.translate.get("guide_ckpt")
    if not path:
        raise ValueError(f"guidance={g.name} needs translate.guide_ckpt=PATH (a segmenter checkpoint, e.g. the "
                         f"source model's …/checkpoints/last.ckpt)")
    from dasslab.stages import load_segmenter

    return load_segmenter(path).to(device).model.eval().requires_grad_(False)


def export_translations(cfg: DictConfig) -> list[Path]:
    """Translate ``translate.split`` at every requested depth; returns the depth folders."""
    from dasslab.guidance import make_guidance
    from dasslab.lit.diffusion_module import load_diffusion

    t = cfg.translate
    depths = [int(d) for d in (t.depths if t.get("depths") else [t.depth])]
    split = t.split
    if split not in SPLITS:
        raise ValueError(f"translate.split={split!r}: expected one of {list(SPLITS)}")
    device = _device(cfg)
    module = load_diffusion(t.diffusion_ckpt).to(device)
    T = module.schedule.num_timesteps
    bad = [d for d in depths if not 0 <= d <= T]
    if bad:
        raise ValueError(f"translate.depths={depths}: {bad} outside 0..{T} (the diffusion schedule's T)")
    size = list(cfg.dataset.image_size)
    module.check_data((1, 3, *size), what=f"dataset.image_size={size}")
    ds = build_dataset(cfg.dataset, SPLITS[split], train=False, resize_labels=True)
    indices = list(range(len(ds)))[: t.limit or None]
    out = Path(t.out_dir)
    _check_writable(out)
    guide = _guide(cfg, device)
    sampler = module.sampler()
    bs = int(t.batch_size)
    guidance_cfg = OmegaConf.to_container(cfg.guidance, resolve=True) if guide is not None else None
    arrangement_cfg = OmegaConf.to_container(cfg.arrangement, resolve=True) if guide is not None else None
    folders = []
    for depth in depths:
        droot = depth_dir(out, depth)
        img_dir, lab_dir = droot / "source" / "images", droot / "source" / "labels"
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(droot / "classes.txt", "\n".join(ds.class_names) + "\n")
        shift = {}
        done = written = skipped = 0
        bar = tqdm(total=len(indices), desc=f"translate n={depth}", dynamic_ncols=True)
        for ci, start in enumerate(range(0, len(indices), bs)):
            chunk = indices[start:start + bs]
            stems = [Path(ds.samples[i][0]).stem for i in chunk]
            if all((img_dir / f"{s}.png").is_file() and (lab_dir / f"{s}.png").is_file() for s in stems):
                done += len(chunk)
                bar.update(len(chunk))
                continue
            items = [ds[i] for i in chunk]
            x = torch.stack([it["image"] for it in items]).to(device)
            y = torch.stack([it["label"] for it in items]).to(device)
            guidance = None
            if guide is not None:
                guidance = make_guidance(guide.normalize, guide.forward_normalized, y, guidance_cfg,
                                         arrangement_cfg)
            gen = torch.Generator(device=device).manual_seed(chunk_seed(cfg.seed, depth, ci))
            xt = sampler.translate(x, depth, t.num_steps, guidance=guidance, generator=gen)
            skipped += sampler.skipped
            for s in sampler.stats:
                acc = shift.setdefault(s["step"], [0.0, 0])
                acc[0] += s.get("shift_over_sigma", 0.0)
                acc[1] += 1
            for it, img in zip(items, to_uint8(xt)):
                atomic_write_png(lab_dir / f"{it['name']}.png", it["label"].numpy().astype(np.uint8))
                atomic_write_png(img_dir / f"{it['name']}.png", img)
            written += len(chunk)
            bar.update(len(chunk))
        bar.close()
        steps = sorted(shift)
        manifest = {"depth": depth, "num_steps": t.num_steps, "split": split, "count": len(indices),
                    "written_now": written, "skipped_done": done, "seed": cfg.seed,
                    "guidance": guidance_cfg, "arrangement": arrangement_cfg,
                    "shift_over_sigma_per_step": [shift[k][0] / max(shift[k][1], 1) for k in steps],
                    "skipped_guidance_steps": skipped}
        if skipped:
            log.warning("n=%d: %d reverse steps had a non-finite guidance gradient and ran unguided", depth, skipped)
        atomic_write_text(droot / "manifest.json", json.dumps(manifest, indent=2))
        if guide is not None and steps and written:
            save_curve(droot / "guidance_shift.png", steps, {"||λΣ∇L|| / σ_k (RMS)":
                                                            manifest["shift_over_sigma_per_step"]},
                       "reverse step (0 = noisiest)", "shift / sigma")
        folders.append(droot)
        log.info("translated %d images at n=%d into %s (%d already there)", len(indices), depth, droot, done)
    if t.get("grid_images"):
        save_png(out / "grid.png", translation_grid(ds, indices[: int(t.grid_images)], out, depths))
    return folders


def translation_grid(ds, indices, out: Path, depths) -> np.ndarray:
    """Fig. 4-style picture: one row per image, columns source | phi^n … | label."""
    rows = []
    for i in indices:
        item = ds[i]
        src = to_uint8(item["image"])
        row = [src]
        for d in depths:
            row.append(read_image(depth_dir(out, d) / "source" / "images" / f"{item['name']}.png"))
        row.append(overlay(np.zeros_like(src), item["label"].numpy(), ds.num_classes, alpha=1.0))
        rows.append(row)
    h = rows[0][0].shape[0]
    return grid(rows, titles=["source"] + [f"n={d}" for d in depths] + ["label"], scale=max(1, 64 // h))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="translate")
def main(cfg: DictConfig) -> None:
    from dasslab.stages import save_config
    from dasslab.validate import validate_config

    validate_config(cfg)
    save_config(cfg, Path(cfg.paths.output_dir))
    folders = export_translations(cfg)
    for f in folders:
        print(f"translated dataset: {f}")


if __name__ == "__main__":
    main()
