"""Why self-training adds little on digits: the teacher's pseudo-labels on target-train images, measured.

For each checkpoint (the source model; the EMA teacher at the end of a self_training / best_st run) and
the labelled copy of the target-train images, with the confidence threshold tau of adapt.self_training:

* ``confident``: the share of pixels whose max softmax exceeds tau (the mean pseudo-label weight q);
* ``fg_confident``: the same over the true digit pixels;
* ``acc_confident`` / ``fg_acc_confident``: the accuracy of the pseudo-labels on those pixels;
* ``fg_miou``: the foreground mIoU of the argmax pseudo-labels (every pixel).

    python experiments/digits_demo/pseudo_label_probe.py OUT.json NAME=CKPT[:teacher] ...
"""

from __future__ import annotations

import json
import sys

import torch

from dasslab.checkpoints import load_segmenter, read_checkpoint
from dasslab.data.digits import Digits
from dasslab.segmentation.metrics import SegmentationMetrics

TAU, IMAGES, ROOT = 0.968, 600, "data/digits"


@torch.no_grad()
def probe(model, images, labels) -> dict:
    conf, pred = model(images).softmax(1).max(1)
    sure = conf > TAU
    fg = (labels > 0) & (labels != 255)
    metric = SegmentationMetrics(11, 255, {"miou_fg": list(range(1, 11))})
    metric.update(torch.nn.functional.one_hot(pred, 11).permute(0, 3, 1, 2).float(), labels)
    return {"confident": sure.float().mean().item(), "fg_confident": sure[fg].float().mean().item(),
            "acc_confident": (pred[sure] == labels[sure]).float().mean().item(),
            "fg_acc_confident": (pred[sure & fg] == labels[sure & fg]).float().mean().item(),
            "fg_miou": float(metric.summary()["miou_fg"])}


def main(out: str, specs: list[str]) -> None:
    ds = Digits(ROOT, domain="target", split="train", labels=True)
    items = [ds[i] for i in range(IMAGES)]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    results = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        path, _, which = path.partition(":")
        seg = load_segmenter(path)
        if which == "teacher":   # the EMA teacher kept in an adaptation checkpoint (adapt.self_training)
            sd = read_checkpoint(path, "ckpt")["state_dict"]
            seg.model.load_state_dict({k[len("teacher."):]: v for k, v in sd.items() if k.startswith("teacher.")})
        results[name] = probe(seg.model.eval(), images, labels)
        print(name, {k: round(v, 3) for k, v in results[name].items()})
    with open(out, "w") as f:
        json.dump({"tau": TAU, "images": IMAGES, "results": results}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
