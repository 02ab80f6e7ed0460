"""Fast in-memory probe of segmenter recipes on digits (instrument diagnosis, issue 9).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_demo/probe.py --train target --steps 1500 \
        --batch 16 --lr 2e-3 --widths 32,64,128 [--out probe.json]

Trains the project's small segmenter (dasslab.segmentation.build_segmenter) with AdamW and poly decay
on one or more training domains held in memory, then reports all-class and digit (foreground) mIoU
on source val and target val. Not part of the pipeline: it exists to compare instrument settings fast.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from dasslab.analysis.judge import foreground_classes, label_consistency
from dasslab.analysis.translation_quality import _stack
from dasslab.config import CONF_DIR
from dasslab.data.datamodule import build_dataset
from dasslab.segmentation import build_segmenter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="target", help="comma list of: source, target")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--norm", default="gn")
    ap.add_argument("--stem-stride", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--save", default=None)
    ap.add_argument("--root", default=None, help="digits cache folder (default: the project's)")
    ap.add_argument("--digit-scale", default=None, help="lo,hi digit side / scene side (default 0.35,0.6)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (a learning curve)")
    args = ap.parse_args()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("train", overrides=["dataset=digits", "paths.root_dir=."]
                      + ([f"dataset.root={args.root}"] if args.root else []))
    from omegaconf import open_dict

    if args.digit_scale:
        with open_dict(cfg):
            for key in ("source", "source_val", "target", "target_train_labeled", "target_val"):
                cfg.dataset[key].digit_scale = [float(v) for v in args.digit_scale.split(",")]
    keys = {"source": "source", "target": "target_train_labeled"}
    def load(key):
        return _stack(build_dataset(cfg.dataset, key, train=False, resize_labels=True))

    dev = torch.device(args.device)
    train = [tuple(t.to(dev) for t in load(keys[d])) for d in args.train.split(",")]
    val = {s: load(s) for s in ("source_val", "target_val")}
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    widths = tuple(int(w) for w in args.widths.split(","))
    model = build_segmenter("small", 11, widths=widths, norm=args.norm, stem_stride=args.stem_stride).to(dev).train()
    fg = foreground_classes(["background"] + [str(d) for d in range(10)])
    curve = []
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1 - s / args.steps, 0) ** 0.9)
    t0, log = time.perf_counter(), []
    for step in range(args.steps):
        loss = 0.0
        for x, y in train:
            i = torch.randint(len(x), (args.batch,), generator=g).to(dev)
            loss = loss + F.cross_entropy(model(x[i]), y[i].long(), ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log.append((step, round(float(loss.detach()), 3)))
            print(step, log[-1][1], round(time.perf_counter() - t0), flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            with torch.no_grad():
                curve.append({"step": step + 1,
                              **{s: label_consistency(model, x, y, 11, fg) for s, (x, y) in val.items()}})
            model.train()
    model.eval()
    with torch.no_grad():
        final = {s: label_consistency(model, x, y, 11, fg) for s, (x, y) in val.items()}
    curve.append({"step": args.steps, **final})
    res = {"args": vars(args), "params": model.num_parameters(), "seconds": round(time.perf_counter() - t0, 1),
           "loss": log, "curve": curve, **final}
    print(json.dumps({k: v for k, v in res.items() if k not in ("loss", "curve")}), flush=True)
    if args.out:
        p = Path(args.out)
        old = json.loads(p.read_text()) if p.exists() else []
        p.write_text(json.dumps(old + [res], indent=1) + "\n")
    if args.save:
        torch.save(model.state_dict(), args.save)


if __name__ == "__main__":
    main()
