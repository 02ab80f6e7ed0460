"""Where LCG's and GSG's gradients go on digits: the share of |G|^2 on background pixels.

    OMP_NUM_THREADS=2 .venv/bin/python experiments/digits_demo/gradient_share.py \
        --guide RUN/checkpoints/last.ckpt [--data data/digits] [--out gradient_share.json]

``RUN`` is a source-only run on digits (the guide PTL starts from). For 64 source-val images
noised to t = 100 and 400 (Eq. 2), G of each kind (Eq. 9 / 10, the guide's summed CE) is split
into its squared norm on background pixels and on digit pixels.
"""

from __future__ import annotations

import argparse
import json

import torch

from dasslab.checkpoints import load_segmenter
from dasslab.data.digits import Digits
from dasslab.diffusion.schedule import NoiseSchedule
from dasslab.guidance import make_guidance
from dasslab.guidance.arrangement import GSG, LCG


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--guide", required=True)
    ap.add_argument("--data", default="data/digits")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    guide = load_segmenter(args.guide, setting="--guide").model.eval()
    ds = Digits(args.data, domain="source", split="val")
    items = [ds[i] for i in range(64)]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([torch.as_tensor(it["label"]) for it in items]).long()
    background = (y == 0).float()[:, None]
    sched = NoiseSchedule.linear(1000, 1e-4, 0.02)
    settings = {"name": "sgg", "calibrate": True, "shift": 0.3, "lcg": True, "gsg": True, "reduction": "sum"}
    out = {"background_pixel_share": float(background.mean()), "rows": []}
    for t in (100, 400):
        xt = sched.q_sample(x, torch.full((len(x),), t - 1), torch.randn_like(x))
        g = make_guidance(guide.normalize, guide.forward_normalized, y, settings, "alternate")
        for kind in (LCG, GSG):
            sq = g.gradient(xt, kind)[0].pow(2)
            row = {"t": t, "kind": kind, "background_share_of_grad_sq": float((sq * background).sum() / sq.sum())}
            out["rows"].append(row)
            print(row, flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
