"""Label consistency: does each pixel of a translated image still show its class? (docs/method.md §7)

Scored by a *judge*: a segmenter trained on labeled source AND labeled target images
(``stage=judge``), so that it reads both domains — a judge trained on one domain only
cannot tell "the class is gone" from "I do not know this domain". Label consistency is
the judge's mIoU (%) on translated images against the *source* labels, reported over all
classes and over the foreground classes (all but the background-like classes named in
``exclude``): on scenes where background covers most pixels the all-class mIoU has a
floor (predicting only background scores 1/K of a perfect result), the foreground mIoU
does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dasslab.segmentation.metrics import SegmentationMetrics, nanmean

__all__ = ["foreground_classes", "label_consistency"]


def foreground_classes(class_names: Sequence[str], exclude: Sequence[str] = ("background",)) -> list[int]:
    """Indices of the classes whose names are not in ``exclude``."""
    drop = {e.lower() for e in exclude}
    return [i for i, n in enumerate(class_names) if str(n).lower() not in drop]


@torch.no_grad()
def label_consistency(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      foreground: Sequence[int] | None = None, batch_size: int = 256,
                      ignore_index: int = 255) -> dict[str, float]:
    """``{"miou": all-class mIoU %, "miou_fg": foreground mIoU %}`` of ``judge`` on ``images`` vs ``labels``.

    ``judge`` maps [-1, 1] images to logits at their resolution; ``foreground`` lists the class
    indices averaged for ``miou_fg`` (all classes when None). Classes absent from both labels
    and predictions are left out of the means (NaN IoU), as everywhere in the project.
    """
    dev = next(judge.parameters()).device
    metric = SegmentationMetrics(num_classes, ignore_index).to(dev)
    for i in range(0, len(images), batch_size):
        metric.update(judge(images[i:i + batch_size].to(dev)), labels[i:i + batch_size].to(dev))
    iou = metric.iou().tolist()
    fg = range(num_classes) if foreground is None else foreground
    return {"miou": nanmean(iou), "miou_fg": nanmean([iou[c] for c in fg])}
