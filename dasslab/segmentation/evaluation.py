"""Evaluate a segmenter on a labeled split: mIoU table, metrics.json, confusion matrix, prediction overlays.

The split goes through Lightning's ``trainer.test`` (its progress display: :mod:`dasslab.callbacks.progress`)
on the device the segmenter is on, one process: after a DDP fit only rank 0 evaluates, the whole split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning.pytorch as L
import torch
from rich.console import Console
from rich.table import Table

from dasslab.segmentation.inference import upsample_to
from dasslab.segmentation.metrics import SegmentationMetrics, iou_table, metrics_record, write_metrics
from dasslab.utils.io import atomic_write_bytes, atomic_write_text
from dasslab.visualize import grid, overlay, save_png, to_uint8

log = logging.getLogger(__name__)


class Evaluation(L.LightningModule):
    """What ``trainer.test`` runs: the segmenter's logits on each labelled image into the confusion matrix,
    and the first ``overlays`` images as (image | prediction | label)."""

    def __init__(self, segmenter, num_classes: int, subsets: Mapping[str, Sequence[int]] | None = None,
                 overlays: int = 4) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.metric = SegmentationMetrics(num_classes, 255, dict(subsets or {}), sync=False)
        self.overlays, self.shown = int(overlays), []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        logits = self.segmenter.predict_batch(images)
        labels = batch["label"]
        labels = list(labels) if not isinstance(labels, torch.Tensor) else labels
        k = self.metric.num_classes
        for i in range(len(images)):
            lab = labels[i].to(logits.device)
            lg = upsample_to(logits[i:i + 1], lab.shape[-2:])
            self.metric.update(lg, lab[None])
            if len(self.shown) < self.overlays:
                img = to_uint8(upsample_to(images[i:i + 1], lab.shape[-2:])[0])
                pred = lg.argmax(1)[0].cpu().numpy()
                self.shown.append([img, overlay(img, pred, k), overlay(img, lab.cpu().numpy(), k)])


def test_trainer(device: torch.device, progress: bool = True, name: str | None = None,
                 callbacks: Sequence = ()) -> L.Trainer:
    """A one-device Trainer for ``trainer.test`` / ``trainer.predict`` on ``device`` (no logger, no checkpoints);
    ``name``: what the progress display calls the work."""
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from dasslab.callbacks.progress import StepProgressBar

    return L.Trainer(accelerator=device.type, devices=1, strategy=SingleDeviceStrategy(device=device),
                     logger=False, enable_checkpointing=False, enable_model_summary=False,
                     enable_progress_bar=progress,
                     callbacks=[*([StepProgressBar(name=name)] if progress else []), *callbacks])


def evaluate_segmenter(module, loader, class_names: Sequence[str], out_dir: str | Path,
                       subsets: Mapping[str, Sequence[int]] | None = None, split: str = "target_val",
                       overlays: int = 4, extra: dict | None = None, print_table: bool = True,
                       progress: bool = True, confusion_png: bool = False, filename: str = "metrics.json") -> dict:
    """``module.predict_batch`` over ``loader`` by ``trainer.test``; writes ``filename`` (``metrics.json``),
    ``confusion_matrix.csv`` (rows: label, columns: prediction, pixels), ``overlays.png`` and, with
    ``confusion_png``, ``confusion_matrix.png`` (another ``filename``, ``metrics_<x>.json``: the confusion
    files are ``confusion_matrix_<x>.*``). Returns the metrics record (IoU in percent)."""
    out_dir = Path(out_dir)
    was_training = module.training
    evaluation = Evaluation(module, len(class_names), subsets, overlays)
    trainer = test_trainer(module.device, progress, name=f"eval {split}")
    trainer.test(evaluation, dataloaders=loader, verbose=False)
    module.train(was_training)
    metric = evaluation.metric
    record = metrics_record(metric, class_names, split, **(extra or {}))
    write_metrics(out_dir / filename, record)
    write_confusion(out_dir, metric.compute().cpu(), class_names, split, picture=confusion_png,
                    stem="confusion_matrix" + Path(filename).stem.removeprefix("metrics"))
    shown = evaluation.shown
    if shown:
        save_png(out_dir / "overlays.png", grid(shown, titles=["image", "prediction", "label"],
                                                scale=max(1, 96 // shown[0][0].shape[0])))
    if print_table:
        print_iou(record)
    return record


def write_confusion(out_dir: Path, matrix: torch.Tensor, class_names: Sequence[str], split: str,
                    picture: bool = True, stem: str = "confusion_matrix") -> None:
    """``<stem>.csv`` (pixel counts, a row per label class, a column per predicted class) and, with
    ``picture``, ``<stem>.png`` (each row as a share of its label's pixels)."""
    import csv
    import io

    names = [str(n) for n in class_names]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label \\ prediction", *names])
    for name, row in zip(names, matrix.tolist()):
        writer.writerow([name, *[int(v) for v in row]])
    atomic_write_text(out_dir / f"{stem}.csv", buf.getvalue())
    if not picture:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = matrix.double() / matrix.double().sum(1, keepdim=True).clamp_min(1)
    k = len(names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * k, 1.5 + 0.45 * k))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    ax.set_title(f"confusion on {split} (share of each label's pixels)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out_dir / f"{stem}.png", png.getvalue())


def print_iou(record: dict) -> None:
    """Print the per-class IoU table (rich) with the summary rows."""
    table = Table(title=f"IoU (%) on {record.get('split')}")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, v in record["per_class_iou"].items():
        table.add_row(name, "n/a" if v is None else f"{v:.2f}")
    table.add_row("[bold]mIoU[/bold]", _f(record["miou"]))
    for name, sub in record.get("subsets", {}).items():
        table.add_row(f"[bold]{name}[/bold]", _f(sub["miou"]))
    Console().print(table)


def _f(v):
    return "n/a" if v is None else f"{v:.2f}"


__all__ = ["Evaluation", "evaluate_segmenter", "iou_table", "print_iou", "test_trainer", "write_confusion"]
