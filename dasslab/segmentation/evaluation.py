"""Evaluate a segmenter on a labeled split: mIoU table, metrics.json, prediction overlays."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from dasslab.segmentation.inference import upsample_to
from dasslab.segmentation.metrics import SegmentationMetrics, iou_table, metrics_record, write_metrics
from dasslab.visualize import grid, overlay, save_png, to_uint8

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_segmenter(module, loader, class_names: Sequence[str], out_dir: str | Path,
                       subsets: Mapping[str, Sequence[int]] | None = None, split: str = "target_val",
                       overlays: int = 4, extra: dict | None = None, print_table: bool = True,
                       filename: str = "metrics.json") -> dict:
    """Run ``module.predict_batch`` over ``loader``; write ``filename`` (``metrics.json``) and ``overlays.png``.

    Returns the metrics record (IoU in percent)."""
    out_dir = Path(out_dir)
    was_training = module.training
    module.eval()
    device = module.device
    metric = SegmentationMetrics(len(class_names), 255, dict(subsets or {}), sync=False).to(device)
    shown: list[list] = []
    for batch in tqdm(loader, desc=f"eval {split}", leave=False, dynamic_ncols=True):
        images = batch["image"].to(device)
        logits = module.predict_batch(images)
        labels = batch["label"]
        labels = list(labels) if not isinstance(labels, torch.Tensor) else labels
        for i in range(len(images)):
            lab = labels[i].to(device)
            lg = upsample_to(logits[i:i + 1], lab.shape[-2:])
            metric.update(lg, lab[None])
            if len(shown) < overlays:
                img = upsample_to(images[i:i + 1], lab.shape[-2:])
                img = to_uint8(img[0])
                pred = lg.argmax(1)[0].cpu().numpy()
                lab_np = lab.cpu().numpy()
                k = len(class_names)
                shown.append([img, overlay(img, pred, k), overlay(img, lab_np, k)])
    module.train(was_training)
    record = metrics_record(metric, class_names, split, **(extra or {}))
    write_metrics(out_dir / filename, record)
    if shown:
        save_png(out_dir / "overlays.png", grid(shown, titles=["image", "prediction", "label"],
                                                scale=max(1, 96 // shown[0][0].shape[0])))
    if print_table:
        print_iou(record)
    return record


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


__all__ = ["evaluate_segmenter", "iou_table", "print_iou"]
