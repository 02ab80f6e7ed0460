"""``dasslab-predict ckpt=PATH input=DIR output=DIR``: segment a folder of images with a trained segmenter.

For every image under ``input`` (``.png .jpg .jpeg .bmp .tif .tiff .webp``, subfolders mirrored)
it writes, at the image's original size::

    output/labels/<name>.png    class index per pixel (uint8; Cityscapes trainIds for 19-class models)
    output/color/<name>.png     the label in the dataset's palette (dasslab.data.labels.palette)
    output/overlay/<name>.png   the colours blended onto the image
    output/classes.txt          class names, line i = index i
    output/predict.json         what was done: checkpoint, resolution, counts, and the failed files

The image is resized to the segmenter's training resolution (``dataset.image_size`` of the run
that wrote the checkpoint, read from its ``.hydra/config.yaml``, or ``size=[H,W]``), segmented whole
or with a sliding window (``mode=slide``, windows of the training crop unless ``crop`` is set), and
the logits are resized back to the original size before the argmax — what ``dasslab-eval`` does.

Resumable, never stale: ``predict.json`` records what made the predictions (``settings``: the
checkpoint by content, its classes, the input folder, the input size, the inference mode, window
and stride, the overlay's alpha), written before the first image. A rerun into the same folder
with the same record only does what is missing -- an image whose outputs all exist and are newer
than the image itself is skipped; a rerun with another checkpoint or other settings is refused
with one line naming what changed (``overwrite=true`` removes the old PNGs and redoes every
image). Every file is written atomically, so an interrupted run is simply started again. An
unreadable image is reported on one line and skipped; the others are still done, and the command
exits with status 1 at the end.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from omegaconf import DictConfig, OmegaConf

from dasslab.errors import ConfigError, DataError
from dasslab.utils.paths import real_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
KINDS = ("labels", "color", "overlay")


# --------------------------------------------------------------------------- what to segment
def list_images(input_dir: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """Image files under ``input_dir`` (or the file itself), sorted; what this command writes in the output folder
    ``exclude`` (its ``labels/``, ``color/``, ``overlay/``) is skipped. A link that leads nowhere (a loop, a
    dangling link) is one line naming it, not skipped."""
    from dasslab.utils.paths import link_problem

    root = Path(input_dir).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"input={input_dir}: {link_problem(root) or 'folder not found'}; expected a folder of "
                          f"images")
    skip = [Path(real_path(Path(exclude) / k)) for k in KINDS] if exclude else []
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_symlink() and link_problem(p):
            raise ConfigError(f"{p}: {link_problem(p)}; expected an image file under input={input_dir} (remove the "
                              f"link or point it at the image)")
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            continue
        if any(Path(real_path(p)).is_relative_to(s) for s in skip):
            continue
        files.append(p)
    if not files:
        raise ConfigError(f"input={input_dir}: no images found; expected files ending in {' '.join(IMAGE_SUFFIXES)}")
    return files


def check_input_files(files: Sequence[Path], max_pixels) -> None:
    """Before any work: every image's header against the pixel cap (``max_pixels``: one line naming the file);
    images whose content is another format than their extension names are said in one log line."""
    from dasslab.data.formats import check_pixels, format_note, header, set_max_pixels

    set_max_pixels(max_pixels, "max_pixels")
    notes = []
    for f in files:
        head = header(f)
        check_pixels(f, head)
        note = format_note(f, head)
        if note:
            notes.append(f"{f} {note}")
    if notes:
        log.info("%d input images hold another format than their extension names (read by content all the same; "
                 "first: %s)", len(notes), notes[0])


def check_not_input(input_dir, output_dir) -> None:
    """The output folder may not be the input folder (the predictions would be written among the images)."""
    if Path(real_path(output_dir)) == Path(real_path(input_dir)):
        raise ConfigError(f"output={output_dir}: the same folder as input={input_dir}; expected another folder (e.g. "
                          f"{Path(str(input_dir).rstrip('/')).name}_predicted beside it), so that predictions are "
                          f"not written among the images")


def output_name(path: Path, input_dir: Path) -> Path:
    """``sub/name.jpg`` -> ``sub/name.png`` (relative to the input folder)."""
    rel = path.name if input_dir.is_file() else path.relative_to(input_dir)
    return Path(rel).with_suffix(".png")


# --------------------------------------------------------------------------- resolution
@dataclass
class Resolution:
    """Where the segmenter reads its input: a fixed ``size`` (H, W) or the image's own size (None)."""

    size: list[int] | None
    crop: list[int] | None
    source: str


def _pair(value, setting: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = [value, value]
    try:
        pair = [int(v) for v in value]
    except (TypeError, ValueError):
        pair = []
    if len(pair) != 2 or min(pair) <= 0:
        raise ConfigError(f"{setting}={value}: expected [height, width] in pixels, or null")
    return pair


def _run_config(ckpt: Path):
    """The resolved config of the run that wrote ``…/checkpoints/last.ckpt`` (``.hydra/config.yaml``), or None.

    A damaged file is one line (:class:`~dasslab.provenance.RecordError`), not a silent fall-back to another
    input size: it is read only when the size is not given."""
    from dasslab.provenance import RecordError

    for run_dir in (ckpt.parent.parent, ckpt.parent):
        path = run_dir / ".hydra" / "config.yaml"
        if path.is_file():
            try:
                cfg = OmegaConf.load(path)
            except Exception as e:  # noqa: BLE001 - whatever the YAML parser raises
                mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None)
                detail = (f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark and problem
                          else " ".join(str(e).split())[:120])
                raise RecordError(f"{path}: unreadable run config of ckpt={ckpt} ({type(e).__name__}: {detail}); "
                                  f"expected the YAML the training run wrote; set size=[H,W] (or size=native) to "
                                  f"segment without it") from None
            if not isinstance(cfg, DictConfig):
                raise RecordError(f"{path}: run config of ckpt={ckpt} is not a mapping; expected the YAML the "
                                  f"training run wrote; set size=[H,W] (or size=native) to segment without it")
            return cfg
    return None


def _select(cfg, key: str):
    try:
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - an interpolation that needs Hydra's runtime
        return None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def training_resolution(ckpt: str | Path, hparams: dict, size=None, crop=None) -> Resolution:
    """The input size (H, W) and sliding-window crop the segmenter was trained at.

    Order: the ``size``/``crop`` settings; the checkpoint's hyper-parameters (``image_size``,
    ``crop_size``); the run's saved ``.hydra/config.yaml`` (``dataset.image_size``/``crop_size``);
    ``size=native`` (or nothing known) uses each image's own size.
    """
    native = isinstance(size, str) and size.lower() == "native"
    size = None if native else _pair(size, "size")
    crop = _pair(crop, "crop")
    if size is not None or native:
        return Resolution(size, crop, "size setting")
    hp_size = hparams.get("image_size")
    if hp_size is not None:
        return Resolution(_pair(hp_size, "checkpoint image_size"), crop or _pair(hparams.get("crop_size"), "crop"),
                          "checkpoint hyper-parameters")
    cfg = _run_config(Path(ckpt).expanduser())
    if cfg is not None:
        found = _select(cfg, "dataset.image_size")
        if found is not None:
            return Resolution(_pair(found, "dataset.image_size"), crop or _pair(_select(cfg, "dataset.crop_size"),
                                                                                 "dataset.crop_size"),
                              "training run's .hydra/config.yaml")
    return Resolution(None, crop, "native (training resolution unknown: set size=[H,W])")


# --------------------------------------------------------------------------- reading, in loader workers
class ImageFiles(torch.utils.data.Dataset):
    """Items ``{index, image (HxWx3 uint8), input (3xhxw in [-1, 1])}`` or ``{index, error}`` for a bad file."""

    def __init__(self, files: Sequence[Path], size: Sequence[int] | None) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        import cv2

        from dasslab.data.io import read_image

        try:
            image = read_image(self.files[i])
        except DataError as e:
            return {"index": i, "error": str(e)}
        x = image
        if self.size is not None and tuple(image.shape[:2]) != tuple(self.size):
            x = cv2.resize(image, (int(self.size[1]), int(self.size[0])), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)
        return {"index": i, "image": image, "input": x}


def _as_list(batch: list[dict]) -> list[dict]:
    return batch


def _fresh(image: Path, outputs: Sequence[Path]) -> bool:
    """Every output exists and was written after the image was last changed (an edited image is redone)."""
    try:
        changed = image.stat().st_mtime_ns
        return all(o.stat().st_mtime_ns >= changed for o in outputs)
    except OSError:
        return False


# --------------------------------------------------------------------------- segmenting
@dataclass
class Summary:
    written: int = 0
    existing: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@torch.no_grad()
def segment(module, inputs: torch.Tensor, sizes: Sequence[tuple[int, int]], mode: str = "whole",
            crop: Sequence[int] | None = None, stride: Sequence[int] | None = None) -> list[np.ndarray]:
    """Label maps (HxW uint8) at the original ``sizes`` for a batch of equally sized ``inputs`` in [-1, 1]."""
    from dasslab.segmentation.inference import predict_logits, upsample_to

    logits = predict_logits(module.model, inputs, mode, crop, stride)
    return [upsample_to(logits[i:i + 1], size).argmax(1)[0].to(torch.uint8).cpu().numpy()
            for i, size in enumerate(sizes)]


class Segmentation(L.LightningModule):
    """What ``trainer.predict`` runs: a batch of :class:`ImageFiles` items segmented at their original sizes
    (``{"items", "labels", "errors"}``; an unreadable image or a window larger than the image is an error)."""

    def __init__(self, segmenter, mode: str, crop, stride) -> None:
        super().__init__()
        self.segmenter, self.mode, self.crop, self.stride = segmenter, mode, crop, stride

    def predict_step(self, items: list[dict], batch_idx: int) -> dict:
        errors = {it["index"]: it["error"] for it in items if "error" in it}
        ok = [it for it in items if "error" not in it]
        labels = []
        if ok:
            inputs = torch.stack([it["input"] for it in ok]).to(self.device)
            try:
                labels = segment(self.segmenter, inputs, [it["image"].shape[:2] for it in ok], self.mode,
                                 self.crop, self.stride)
            except ValueError as e:           # e.g. a window larger than this image (size=native)
                errors.update({it["index"]: str(e) for it in ok})
                ok = []
        return {"items": ok, "labels": labels, "errors": errors}


class PredictionFiles(BasePredictionWriter):
    """Writes each predicted batch's PNGs (``labels/``, ``color/``, ``overlay/``) as it comes, atomically, and
    counts them in ``summary``; an error is one line on stderr naming the file."""

    def __init__(self, files: Sequence[Path], input_dir: Path, output_dir: Path, kinds: Sequence[str],
                 class_names: Sequence[str], alpha: float, summary: Summary) -> None:
        super().__init__(write_interval="batch")
        from dasslab.data.labels import palette

        self.files, self.input_dir, self.output_dir = list(files), input_dir, output_dir
        self.kinds, self.k, self.alpha, self.summary = list(kinds), len(class_names), alpha, summary
        self.colors = palette(self.k)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        from tqdm import tqdm

        from dasslab.utils.io import atomic_write_png
        from dasslab.visualize import overlay

        for index, msg in prediction["errors"].items():
            path = self.files[index]
            msg = msg if msg.startswith(str(path)) else f"{path}: {msg}"
            self.summary.failed[str(path)] = msg
            tqdm.write(f"error: {msg}; skipped", file=sys.stderr)
        for it, label in zip(prediction["items"], prediction["labels"]):
            rel = output_name(self.files[it["index"]], self.input_dir)
            if "labels" in self.kinds:
                atomic_write_png(self.output_dir / "labels" / rel, label)
            if "color" in self.kinds:
                atomic_write_png(self.output_dir / "color" / rel, self.colors[label])
            if "overlay" in self.kinds:
                atomic_write_png(self.output_dir / "overlay" / rel, overlay(it["image"], label, self.k, self.alpha))
            self.summary.written += 1


def predict_folder(module, input_dir: str | Path, output_dir: str | Path, resolution: Resolution,
                   mode: str = "whole", stride: Sequence[int] | None = None, kinds: Sequence[str] = KINDS,
                   alpha: float = 0.5, batch_size: int = 4, num_workers: int = 0, progress: bool = True,
                   redo: bool = False) -> Summary:
    """Segment every image under ``input_dir`` into ``output_dir`` (see the module docstring) by Lightning's
    ``trainer.predict`` and a :class:`PredictionFiles` writer; ``redo``: every image, also those whose outputs
    exist."""
    from dasslab.segmentation.evaluation import test_trainer
    from dasslab.utils.io import atomic_write_text

    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"outputs={list(kinds)}: expected a non-empty subset of {list(KINDS)}")
    if mode not in ("whole", "slide"):
        raise ConfigError(f"mode={mode}: expected whole or slide")
    if mode == "slide" and resolution.crop is None:
        raise ConfigError("crop=null: mode=slide needs the window size; set crop=[H,W] (the training crop is unknown)")
    names = list(module.class_names)
    atomic_write_text(output_dir / "classes.txt", "".join(f"{n}\n" for n in names))

    summary = Summary()
    todo, targets = [], {}
    for f in list_images(input_dir, exclude=output_dir):
        rel = output_name(f, input_dir)
        if rel in targets:
            summary.failed[str(f)] = (f"{f}: same output name {rel} as {targets[rel]}; skipped "
                                      f"(rename one of them)")
            continue
        targets[rel] = f
        if not redo and _fresh(f, [output_dir / k / rel for k in kinds]):
            summary.existing += 1
        else:
            todo.append(f)
    for msg in summary.failed.values():
        log.error(msg)
    if not todo:
        return summary

    fixed = resolution.size is not None
    loader = torch.utils.data.DataLoader(ImageFiles(todo, resolution.size), batch_size=batch_size if fixed else 1,
                                         num_workers=num_workers, collate_fn=_as_list)
    trainer = test_trainer(module.device, progress, name="predict",
                           callbacks=[PredictionFiles(todo, input_dir, output_dir, kinds, names, alpha, summary)])
    trainer.predict(Segmentation(module, mode, resolution.crop, stride), dataloaders=loader,
                    return_predictions=False)
    return summary


# --------------------------------------------------------------------------- entry point
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prediction_settings(ckpt, class_names, input_dir, res: Resolution, mode: str, stride, alpha: float) -> dict:
    """What makes the predictions of a folder: the record ``predict.json`` keeps and a rerun must match."""
    from dasslab.provenance import file_identity

    slide = mode == "slide"
    return {"checkpoint": file_identity(ckpt), "classes": list(class_names),
            "input": str(Path(input_dir).expanduser().resolve()), "size": res.size, "mode": mode,
            "crop": res.crop if slide else None, "stride": list(stride) if slide and stride else None,
            "overlay_alpha": float(alpha)}


def _predicted(output_dir: Path) -> list[Path]:
    return [p for k in KINDS if (output_dir / k).is_dir() for p in (output_dir / k).rglob("*.png")]


def check_output(output_dir: str | Path, settings: dict, overwrite: bool = False) -> bool:
    """May this run add to ``output_dir``? True when it holds the same record (or nothing); with ``overwrite``
    True as well (the caller removes the old PNGs); else :class:`StaleOutputError` naming what changed."""
    from dasslab.errors import StaleOutputError
    from dasslab.provenance import describe_change, differences, read_record

    out = Path(output_dir).expanduser()
    record = out / "predict.json"
    if overwrite:
        return True
    if record.is_file():
        old = read_record(record, "prediction record", "delete it with the predictions beside it, choose another "
                                                      "output, or set overwrite=true")
        old = old.get("settings")
        if not isinstance(old, dict):
            raise StaleOutputError(f"output={out}: predict.json does not record how its predictions were made "
                                   f"(written by an older dasslab-predict); choose another output, delete it, or set "
                                   f"overwrite=true to redo every image")
        diff = differences(old, settings)
        if diff:
            k = diff[0]
            raise StaleOutputError(f"output={out}: its predictions were made with other settings "
                                   f"({describe_change(k, old.get(k), settings.get(k))}"
                                   f"{' …' if len(diff) > 1 else ''}); choose another output, delete it, or set "
                                   f"overwrite=true to redo every image")
    elif _predicted(out):
        raise StaleOutputError(f"output={out}: holds predictions but no predict.json; cannot tell how they were made: "
                               f"choose another output or set overwrite=true to redo every image")
    return True


def run(cfg: DictConfig) -> Summary:
    """Check every setting, the checkpoint and the output folder's record, then segment (see the module docstring)."""
    from dasslab.checkpoints import SEGMENTERS, check_checkpoint, load_segmenter, trust_checkpoints
    from dasslab.checks.settings import validate_predict
    from dasslab.utils.io import atomic_write_text

    validate_predict(cfg)
    check_not_input(cfg.input, cfg.output)
    check_input_files(list_images(cfg.input, exclude=cfg.output), cfg.get("max_pixels"))   # images, each not a bomb
    size = cfg.get("size")
    size = OmegaConf.to_container(size) if OmegaConf.is_config(size) else size
    crop = OmegaConf.to_container(cfg.crop) if OmegaConf.is_config(cfg.get("crop")) else cfg.get("crop")
    stride = _pair(OmegaConf.to_container(cfg.stride) if OmegaConf.is_config(cfg.get("stride")) else cfg.get("stride"),
                   "stride")
    with trust_checkpoints(cfg.get("trust_checkpoint")):
        info = check_checkpoint(cfg.ckpt, "ckpt", SEGMENTERS)
    res = training_resolution(cfg.ckpt, info.hp, size=size, crop=crop)
    if cfg.mode == "slide" and res.crop is None:
        raise ConfigError("crop=null: mode=slide needs the window size; set crop=[H,W] (the training crop is unknown)")
    if cfg.mode == "slide" and res.size is not None and (res.crop[0] > res.size[0] or res.crop[1] > res.size[1]):
        raise ConfigError(f"crop={res.crop}: larger than the input size {res.size} ({res.source}); expected at most "
                          f"{res.size}")
    kinds = list(cfg.outputs)
    alpha = float(cfg.overlay_alpha)
    settings = prediction_settings(cfg.ckpt, info.class_names or [], cfg.input, res, cfg.mode, stride, alpha)
    overwrite = bool(cfg.get("overwrite", False))
    check_output(cfg.output, settings, overwrite)
    with trust_checkpoints(cfg.get("trust_checkpoint")):
        module = load_segmenter(cfg.ckpt, setting="ckpt")
    module = module.to(_device(str(cfg.device)))
    out = Path(cfg.output).expanduser()
    if overwrite:
        for old in _predicted(out):
            old.unlink()
    record = {"settings": settings, "complete": False, "checkpoint": str(cfg.ckpt), "input": str(cfg.input),
              "size": res.size, "size_from": res.source, "mode": cfg.mode,
              "crop": res.crop if cfg.mode == "slide" else None, "outputs": kinds}
    atomic_write_text(out / "predict.json", json.dumps(record, indent=2))
    log.info(f"segmenting {cfg.input} at {res.size or 'native size'} ({res.source}), mode={cfg.mode}")
    summary = predict_folder(module, cfg.input, cfg.output, res, mode=cfg.mode, stride=stride, kinds=kinds,
                             alpha=alpha, batch_size=int(cfg.batch_size),
                             num_workers=int(cfg.num_workers), progress=bool(cfg.progress), redo=overwrite)
    record.update(complete=True, written=summary.written, existing=summary.existing, failed=summary.failed)
    atomic_write_text(out / "predict.json", json.dumps(record, indent=2))
    return summary
