"""How the calibrated shift and the reverse variance of a 10-step chain trade labels against noise.

Translates the first source-val digit scenes with SGG (LCG with context, the guide's loss on x0_hat)
at a few depths, shifts and variances, and prints the judge's foreground label consistency and the
high-frequency statistic `hf` (target images: ~0.134). Used to pick the demo's shift and Sigma
(experiments/digits_demo/README.md).

    python experiments/digits_demo/shift_probe.py --diffusion D.ckpt --judge J.ckpt --guide S.ckpt \
        [--depths 300 600] [--shifts 0.3 0.6 1.0] [--variance posterior] [--images 64]

The checkpoints are those of a digits pipeline run (outputs/cache/{diffusion,judge,source}/<key>/checkpoints/).
"""

from __future__ import annotations

import argparse

import torch

from dasslab.analysis.image_stats import high_frequency_energy
from dasslab.analysis.judge import label_consistency
from dasslab.checkpoints import load_diffusion, load_segmenter
from dasslab.data.digits import Digits
from dasslab.guidance.translation import translate_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffusion", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--guide", required=True)
    ap.add_argument("--depths", type=int, nargs="+", default=[300, 600])
    ap.add_argument("--shifts", type=float, nargs="+", default=[0.3, 0.6, 1.0])
    ap.add_argument("--variance", default="posterior", help="beta | posterior | a number in [0, 1]")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--root", default="data/digits")
    args = ap.parse_args()
    variance = args.variance if args.variance in ("beta", "posterior") else float(args.variance)
    sampler = load_diffusion(args.diffusion, setting="--diffusion").sampler()
    judge_module = load_segmenter(args.judge, setting="--judge")
    judge = judge_module.model.eval()
    guide = load_segmenter(args.guide, setting="--guide").model.eval().requires_grad_(False)
    src = Digits(root=args.root, size=32, n_train=3000, n_val=600, seed=0, domain="source", split="val")
    x = torch.stack([src[i]["image"] for i in range(args.images)])
    y = torch.stack([src[i]["label"] for i in range(args.images)])
    k = len(judge_module.class_names)
    print("depth shift consistency_fg hf")
    for n in args.depths:
        for shift in args.shifts:
            g = {"calibrate": True, "shift": shift, "lcg_input": "whole", "loss_on": "x0"}
            out = torch.cat([tr.images for _, tr in translate_images(sampler, x, y, n, 10, guide, g, "alternate",
                                                                    batch_size=args.images, seed=0,
                                                                    variance=variance)])
            c = label_consistency(judge, out, y, k, foreground=list(range(1, k)))
            print(n, shift, round(c["miou_fg"], 1), round(high_frequency_energy(out), 3), flush=True)


if __name__ == "__main__":
    main()
