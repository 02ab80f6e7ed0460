"""Segmentation metrics: confusion matrix -> per-class IoU -> mIoU over class subsets.

IoU_c = TP_c / (TP_c + FP_c + FN_c), reported in percent (0-100) as papers print it.
A class with an empty denominator (absent from both the labels and the predictions)
has IoU NaN and is left out of the mean; ``mIoU`` over a subset is the nan-mean of
the subset's IoUs. Pixels labelled ``ignore_index`` are not counted.

The confusion matrix is accumulated with torchmetrics, so it is summed across DDP
ranks before any IoU is computed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from dasslab.utils.io import atomic_write_text


class SegmentationMetrics(MulticlassConfusionMatrix):
    """A confusion matrix over ``num_classes`` that reports IoU tables.

    ``subsets`` maps a subset name (e.g. ``miou16``) to the class indices it averages
    over; ``miou`` (all classes) is always reported.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 subsets: Mapping[str, Sequence[int]] | None = None, sync: bool = True) -> None:
        # sync: sum the confusion matrix over DDP ranks on compute (each rank saw a shard); False when
        # one process evaluates the whole split alone (the others may have finished)
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, normalize=None, sync_on_compute=sync)
        self.subsets = {k: list(v) for k, v in (subsets or {}).items()}
        for name, idx in self.subsets.items():
            bad = [i for i in idx if not 0 <= i < num_classes]
            if bad:
                raise ValueError(f"dataset.eval_subsets.{name}: class indices {bad} outside [0, {num_classes})")

    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        pred = logits_or_pred.argmax(1) if logits_or_pred.dim() == target.dim() + 1 else logits_or_pred
        super().update(pred, target)

    def iou(self) -> torch.Tensor:
        """Per-class IoU in percent; NaN for classes absent from labels and predictions."""
        cm = self.compute().double()   # compute() syncs the confusion matrix across DDP ranks
        tp = cm.diag()
        denom = cm.sum(0) + cm.sum(1) - tp
        return torch.where(denom > 0, 100.0 * tp / denom.clamp_min(1), torch.full_like(tp, float("nan")))

    def summary(self) -> dict[str, float]:
        """``{"miou": …, <subset>: …}`` as nan-means of the per-class IoU."""
        iou = self.iou()
        out = {"miou": nanmean(iou.tolist())}
        for name, idx in self.subsets.items():
            out[name] = nanmean([iou[i].item() for i in idx])
        return out


def nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def iou_table(per_class: Mapping[str, float], summary: Mapping[str, float] | None = None) -> str:
    """A Markdown table of per-class IoU (and the summary rows)."""
    lines = ["| class | IoU |", "|---|---:|"]
    lines += [f"| {name} | {_fmt(v)} |" for name, v in per_class.items()]
    for name, v in (summary or {}).items():
        lines.append(f"| **{name}** | **{_fmt(v)}** |")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def metrics_record(metric: SegmentationMetrics, class_names: Sequence[str], split: str,
                   **extra) -> dict:
    """The ``metrics.json`` record of docs/method.md §5: miou, per_class_iou, subsets, split."""
    iou = metric.iou().tolist()
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for a {len(iou)}-class metric")
    per_class = {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(class_names, iou)}
    summary = metric.summary()
    record = {
        "miou": _json_float(summary["miou"]),
        "per_class_iou": per_class,
        "classes": list(class_names),
        "subsets": {name: {"classes": [class_names[i] for i in idx], "miou": _json_float(summary[name])}
                    for name, idx in metric.subsets.items()},
        "split": split,
        "units": "IoU in percent (0-100)",
    }
    for name in metric.subsets:
        record[name] = _json_float(summary[name])
    record.update(extra)
    return record


def _json_float(v: float):
    return None if math.isnan(v) else round(v, 4)


def write_metrics(path: str | Path, record: dict) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(record, indent=2))
    return path
