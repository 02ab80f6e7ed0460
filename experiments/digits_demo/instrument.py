"""The digits instrument, measured (issue 9): segmenters on both val splits, and the domain score.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_demo/instrument.py \
        --ckpt source=RUN/checkpoints/last.ckpt --ckpt oracle=... --ckpt judge=... [--out DIR]

For every checkpoint: mIoU over all classes and over the digits (foreground) on source val and
target val. Then the domain classifier of :mod:`dasslab.analysis.domain_score` (trained with
Eq. 2 noise on both domains, t < 600) scored on source val, target val and source val with
Eq. 2 noise at t = 100, 300, 600. Writes instrument.json next to this file (or in --out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from dasslab.analysis.domain_score import domain_score, train_domain_classifier
from dasslab.analysis.judge import foreground_classes, label_consistency
from dasslab.analysis.translation_quality import _stack
from dasslab.checkpoints import load_segmenter
from dasslab.config import CONF_DIR
from dasslab.data.datamodule import build_dataset
from dasslab.diffusion.schedule import NoiseSchedule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", action="append", default=[], help="name=path of a segmenter checkpoint")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    ap.add_argument("--classifier-steps", type=int, default=400)
    ap.add_argument("--no-classifier", action="store_true")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["dataset=digits", "paths.root_dir=."])
    val = {}
    for split in ("source_val", "target_val"):
        val[split] = _stack(build_dataset(cfg.dataset, split, train=False, resize_labels=True))
    out: dict = {"segmenters": {}, "domain_score": {}}
    for item in args.ckpt:
        name, path = item.split("=", 1)
        module = load_segmenter(path)
        fg = foreground_classes(module.class_names)
        out["segmenters"][name] = {split: label_consistency(module.model.eval(), x, y, module.model.num_classes, fg)
                                   for split, (x, y) in val.items()}
        print(name, out["segmenters"][name], flush=True)
    if not args.no_classifier:
        t0 = time.perf_counter()
        src, _ = _stack(build_dataset(cfg.dataset, "source", train=False, resize_labels=True, limit=1000))
        tgt, _ = _stack(build_dataset(cfg.dataset, "target", train=False, resize_labels=True, limit=1000))
        sched = NoiseSchedule.linear()
        clf = train_domain_classifier(src, tgt, sched.q_sample, t_max=600, steps=args.classifier_steps, seed=0)
        ds = out["domain_score"]
        ds["train_seconds"] = round(time.perf_counter() - t0, 1)
        ds["source_val"] = domain_score(clf, val["source_val"][0])
        ds["target_val"] = domain_score(clf, val["target_val"][0])
        g = torch.Generator().manual_seed(0)
        for t in (100, 300, 600):
            x = val["source_val"][0]
            noisy = sched.q_sample(x, torch.full((len(x),), t - 1), torch.randn(x.shape, generator=g))
            ds[f"source_val_noise_t{t}"] = domain_score(clf, noisy)
            x = val["target_val"][0]
            noisy = sched.q_sample(x, torch.full((len(x),), t - 1), torch.randn(x.shape, generator=g))
            ds[f"target_val_noise_t{t}"] = domain_score(clf, noisy)
        print(ds, flush=True)
    path = Path(args.out) / "instrument.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.setdefault("segmenters", {}).update(out["segmenters"])
    if out["domain_score"]:
        old["domain_score"] = out["domain_score"]
    path.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
