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
with exactly the files an uninterrupted run writes. Only a run with the same
record adds to a folder: ``manifest.json`` holds the data translated (root, file
names, sizes and mtimes, classes), the checkpoints (by content), the guidance,
depth, steps and seed; a rerun with anything else is refused with one line naming
what changed, before any image is written. Every PNG is written to a
temporary file and renamed, so no half-written file is ever left behind.
With ``guidance=sgg|lcg_only|gsg_only`` and ``translate.guide_ckpt=…`` the
reverse steps are guided (SGG, Sec. 4.2).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dasslab.checkpoints import load_diffusion, load_segmenter
from dasslab.data.datamodule import build_dataset
from dasslab.data.io import read_image
from dasslab.errors import ConfigError, StaleOutputError  # noqa: F401  (StaleOutputError: re-exported)
from dasslab.guidance import validate_guidance
from dasslab.guidance.translation import guidance_enabled, translate_images
from dasslab.provenance import dataset_fingerprint, describe_change, differences, file_identity, read_record
from dasslab.utils.io import atomic_write_png, atomic_write_text
from dasslab.utils.progress import progress
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
        raise ConfigError(f"translate.out_dir={out}: not writable ({e.strerror or e}); "
                              f"choose a folder you can write to") from None


def _device(cfg: DictConfig) -> torch.device:
    want = cfg.translate.get("device", "auto")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(want)


def _guided(cfg: DictConfig) -> bool:
    return bool(guidance_enabled(OmegaConf.to_container(cfg.guidance, resolve=True) if cfg.get("guidance") else None))


def _guide(cfg: DictConfig, device: torch.device):
    """The guide segmenter when guidance is on (else None)."""
    if not _guided(cfg):
        return None
    path = cfg.translate.get("guide_ckpt")
    if not path:
        raise ConfigError(f"guidance={validate_guidance(cfg.guidance).mode} needs guide_ckpt=PATH (a segmenter "
                          f"checkpoint, e.g. the source model's …/checkpoints/last.ckpt)")
    return load_segmenter(path, setting="guide_ckpt").to(device).model.eval().requires_grad_(False)


def _settings(cfg: DictConfig, depths: list[int], guided: bool):
    """The export's translation settings (:class:`~dasslab.calibration.TranslationSettings`: its depths are given)."""
    from dasslab.calibration import TranslationSettings

    return TranslationSettings.of({"N": len(depths), "t_max": max(depths)}, cfg.translate,
                                  cfg.guidance if guided else None, int(cfg.diffusion.num_timesteps))


def _auto(cfg: DictConfig, guided: bool) -> bool:
    t = cfg.translate
    return bool(_settings(cfg, [int(d) for d in (t.depths if t.get("depths") else [t.depth])], guided).auto_keys())


def _plan(cfg: DictConfig, depths: list[int], guided: bool, out: Path):
    """The variance and guidance shift of each depth: as given, or calibrated (``translate.calibration``, or a
    calibration at these depths into ``<out_dir>/calibration``) for the settings left at ``auto``."""
    from dasslab.calibration import TranslationPlan, load_calibration
    from dasslab.calibration.calibrate import run_calibration

    settings = _settings(cfg, depths, guided)
    t = cfg.translate
    calibration = None
    if settings.auto_keys():
        calibration = (load_calibration(t.calibration) if t.get("calibration") else
                       run_calibration(cfg.dataset, cfg.calibrate, settings, cfg.guidance, cfg.arrangement,
                                       t.get("guide_ckpt") or None, t.diffusion_ckpt, int(cfg.seed),
                                       out / "calibration", depths=depths))
    return TranslationPlan.of(settings, calibration)


def fingerprint(cfg: DictConfig, depth: int, guided: bool, data: dict | None = None) -> dict:
    """Every setting and input that determines the images of one depth folder (files are reused only if equal):
    the data itself (``data``: :func:`dasslab.provenance.dataset_fingerprint` of the translated images and
    labels -- root, names, sizes, mtimes, classes), the checkpoints by content, the sampling settings."""
    t = cfg.translate
    return {"depth": int(depth), "num_steps": t.num_steps, "variance": t.variance,
            "split": t.split, "limit": t.limit,
            "batch_size": int(t.batch_size), "seed": int(cfg.seed), "image_size": list(cfg.dataset.image_size),
            "data": data, "diffusion_ckpt": file_identity(t.diffusion_ckpt),
            # settings left at auto: chosen by the calibration these settings make (or the file given)
            "calibration": (file_identity(t.calibration) if t.get("calibration") else
                            OmegaConf.to_container(cfg.calibrate, resolve=True)) if _auto(cfg, guided) else None,
            "guide_ckpt": file_identity(t.guide_ckpt) if guided else None,
            "guidance": ({"mode": validate_guidance(cfg.guidance).mode,
                          **OmegaConf.to_container(cfg.guidance, resolve=True)} if guided else None),
            "arrangement": OmegaConf.to_container(cfg.arrangement, resolve=True) if guided else None}


def _check_same(droot: Path, fp: dict) -> None:
    """Refuse to add to a folder written with other settings or from other data (stale images would pass as new)."""
    manifest = droot / "manifest.json"
    if not manifest.is_file():
        if any((droot / "source" / "images").glob("*.png")):
            raise StaleOutputError(f"translate.out_dir={droot.parent}: {droot.name} holds images but no manifest; "
                                   f"cannot tell how they were made: choose another translate.out_dir")
        return
    old = read_record(manifest, "translation manifest", f"delete {droot} or choose another translate.out_dir")
    old = old.get("settings", {})
    diff = differences(old, fp)
    if diff:
        k = diff[0]
        raise StaleOutputError(f"translate.out_dir={droot.parent}: {droot.name} was written with other settings "
                               f"({describe_change(k, old.get(k), fp.get(k))}{' …' if len(diff) > 1 else ''}); "
                               f"choose another translate.out_dir or delete it")


def export_translations(cfg: DictConfig) -> list[Path]:
    """Translate ``translate.split`` at every requested depth; returns the depth folders.

    Everything is checked before the first image is written: the split (pre-scanned), every depth folder's
    record against this run's settings and data, the diffusion checkpoint against the image size."""
    from dasslab.checks.files import prescan_split

    t = cfg.translate
    depths = [int(d) for d in (t.depths if t.get("depths") else [t.depth])]
    split = t.split
    if split not in SPLITS:
        raise ConfigError(f"translate.split={split!r}: expected one of {list(SPLITS)}")
    ds = build_dataset(cfg.dataset, SPLITS[split], train=False, resize_labels=True, limit=t.limit)
    prescan_split(cfg, ds, SPLITS[split])
    indices = list(range(len(ds)))
    out = Path(t.out_dir)
    guided = _guided(cfg)
    if guided and not t.get("guide_ckpt"):
        _guide(cfg, torch.device("cpu"))         # the one-line error: guidance needs a guide
    data = dataset_fingerprint(ds)
    prints = {depth: fingerprint(cfg, depth, guided, data) for depth in depths}
    for depth in depths:                          # every folder checked before any is written
        _check_same(depth_dir(out, depth), prints[depth])
    device = _device(cfg)
    module = load_diffusion(t.diffusion_ckpt, setting="diffusion_ckpt").to(device)
    T = module.schedule.num_timesteps
    bad = [d for d in depths if not 0 <= d <= T]
    if bad:
        raise ConfigError(f"translate.depths={depths}: {bad} outside 0..{T} (the diffusion schedule's T)")
    size = list(cfg.dataset.image_size)
    try:
        module.check_data((1, 3, *size), what=f"dataset.image_size={size}")
    except ValueError as e:
        raise ConfigError(f"diffusion_ckpt={t.diffusion_ckpt}: {e}") from None
    guide = _guide(cfg, device)
    _check_writable(out)
    from dasslab.diffusion.sampler import sampler_options

    sampler = module.sampler(**sampler_options(OmegaConf.to_container(cfg.diffusion, resolve=True), device))
    bs = int(t.batch_size)
    plan = _plan(cfg, depths, guided, out)
    guidance = OmegaConf.to_container(cfg.guidance, resolve=True) if guide is not None else None
    arrangement = OmegaConf.to_container(cfg.arrangement, resolve=True) if guide is not None else None
    folders = []
    for depth in depths:
        droot = depth_dir(out, depth)
        img_dir, lab_dir = droot / "source" / "images", droot / "source" / "labels"
        fp = prints[depth]
        _check_same(droot, fp)
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(droot / "classes.txt", "\n".join(ds.class_names) + "\n")
        depth_shift = plan.shift(depth) if guided else None
        chosen = {**guidance, "shift": depth_shift} if guidance is not None and depth_shift is not None else guidance
        manifest = {"settings": fp, "complete": False, "count": len(indices),
                    "translated_with": {"variance": plan.variance(depth, guided), "shift": depth_shift}}
        atomic_write_text(droot / "manifest.json", json.dumps(manifest, indent=2))
        shift: dict[int, list] = {}
        done = written = skipped = 0
        # closed also on a fault, so that its one error line starts a line of its own
        with progress(total=len(indices), desc=f"translate n={depth}") as bar:
            for ci, start in enumerate(range(0, len(indices), bs)):
                chunk = indices[start:start + bs]
                stems = [Path(ds.samples[i][0]).stem for i in chunk]
                if all((img_dir / f"{s}.png").is_file() and (lab_dir / f"{s}.png").is_file() for s in stems):
                    done += len(chunk)
                    bar.update(len(chunk))
                    continue
                items = [ds[i] for i in chunk]
                x = torch.stack([it["image"] for it in items])
                y = torch.stack([it["label"] for it in items])
                (_, tr), = translate_images(sampler, x, y, depth, t.num_steps, guide, chosen, arrangement,
                                            batch_size=len(chunk), seed=cfg.seed, device=device, first_chunk=ci,
                                            variance=plan.variance(depth, guided))
                skipped += tr.skipped
                for s in tr.stats:
                    acc = shift.setdefault(s["step"], [0.0, 0])
                    acc[0] += s.get("shift_over_sigma", 0.0)
                    acc[1] += 1
                for it, img in zip(items, to_uint8(tr.images)):
                    atomic_write_png(lab_dir / f"{it['name']}.png", it["label"].numpy().astype(np.uint8))
                    atomic_write_png(img_dir / f"{it['name']}.png", img)
                written += len(chunk)
                bar.update(len(chunk))
        steps = sorted(shift)
        manifest.update({"complete": True, "written_now": written, "skipped_done": done,
                         "shift_over_sigma_per_step": [shift[k][0] / max(shift[k][1], 1) for k in steps],
                         "skipped_guidance_steps": skipped})
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
