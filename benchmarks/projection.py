"""Projected wall time of PTL (Sec. 4.3) from measured step costs: the paper's schedule, respaced, pooled.

    python benchmarks/projection.py            # reads benchmarks/results/{guidance,segmenter}.json

Inputs (written by ``bench_guidance.py`` and ``bench_segmenter.py`` on the same device):
per-image cost of an LCG-guided and a GSG-guided reverse step at each measured batch size, and the
segmenter's training step per image for the guide's model at the same image size.

One adaptation iteration at domain n (N domains of K iterations, batch B; alternate arrangement:
ceil(s/2) LCG and floor(s/2) GSG steps for a chain of s steps):

``paper``      s = n, every batch translated on the fly at batch B:
               iter(n) = LCG(B) ceil(n/2) + GSG(B) floor(n/2) + train(2B)   (Eq. 12: translated + source)
``respaced``   the same with s = min(n, S) respaced steps (default S = 25)
``pooled``     a pool of M source images translated once per domain at the pool batch Bp with s =
               min(n, S), the K iterations drawing from it (M = K x B is the paper's on-the-fly
               amount): iter(n) = ceil(M / Bp) (LCG(Bp) ceil(s/2) + GSG(Bp) floor(s/2)) / K + train(2B)
``pooled_paper_steps``  pooled with s = n

A step's cost at a batch that was not measured is the per-image cost of the nearest measured batch
not above it (the smallest measured batch if none), times the batch. Total = sum_n K iter(n).
Writes ``benchmarks/results/projection.json`` and ``projection.png`` (cost per iteration vs n).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: Which Table 1 rows a measured guide stands for (source GTA5 or SYNTHIA -> Cityscapes).
ROWS = {"deeplabv2_r101": ["gta5_deeplabv2_r101", "synthia_deeplabv2_r101"],
        "fcn8s_vgg16": ["gta5_fcn8s_vgg16", "synthia_fcn8s_vgg16"],
        "daformer_mitb5": ["gta5_daformer_mitb5", "synthia_daformer_mitb5"],
        "small": ["digits (built-in benchmark)"]}


def step_cost(per_image: dict[int, float], batch: int) -> float:
    """Seconds of one step at ``batch`` from per-image costs measured at some batch sizes."""
    below = [b for b in per_image if b <= batch]
    b = max(below) if below else min(per_image)
    return per_image[b] * batch


def chain_cost(lcg: dict[int, float], gsg: dict[int, float], batch: int, steps: int) -> float:
    """A translation of ``batch`` images with ``steps`` reverse steps, alternate arrangement."""
    return step_cost(lcg, batch) * math.ceil(steps / 2) + step_cost(gsg, batch) * (steps // 2)


def iteration_costs(c: dict, N: int, K: int, B: int, S: int, M: int, Bp: int) -> dict[str, list[float]]:
    """Seconds per adaptation iteration at each domain n = 1..N, for each schedule."""
    train = c["train_per_image_s"] * 2 * B
    lcg, gsg = c["lcg_per_image_s"], c["gsg_per_image_s"]
    chunks = math.ceil(M / Bp)
    out: dict[str, list[float]] = {"paper": [], "respaced": [], "pooled": [], "pooled_paper_steps": []}
    for n in range(1, N + 1):
        s = min(n, S)
        out["paper"].append(chain_cost(lcg, gsg, B, n) + train)
        out["respaced"].append(chain_cost(lcg, gsg, B, s) + train)
        out["pooled"].append(chunks * chain_cost(lcg, gsg, Bp, s) / K + train)
        out["pooled_paper_steps"].append(chunks * chain_cost(lcg, gsg, Bp, n) / K + train)
    return out


def measured_costs(guidance: dict, segmenter: dict | None, train_override: float | None) -> dict:
    rows = guidance["batches"]
    lcg = {int(b): r["per_image_s"]["lcg"] for b, r in rows.items()}
    gsg = {int(b): r["per_image_s"]["gsg"] for b, r in rows.items()}
    guide = _guide_name(guidance.get("networks", ""))
    train, source = train_override, "--train-step-s"
    if train is None and segmenter:
        h, w = guidance["image_size"]
        for entry in segmenter.get("results", []):
            if entry["model"] != guide:
                continue
            cases = [c for c in entry["cases"] if c["input"][2:] == [h, w] and c.get("dtype") == "fp32"
                     and "train_step" in c]
            if cases:
                best = max(cases, key=lambda c: c["input"][0])
                train = best["train_step"]["median_s"] / best["input"][0]
                source = f"segmenter.json: {guide} train_step at batch {best['input'][0]}, {h}x{w}"
    if train is None:
        raise SystemExit(f"projection: no train step for guide {guide!r} at {guidance['image_size']} in "
                         "segmenter.json; run bench_segmenter.py at that size or pass --train-step-s")
    return {"guide": guide, "lcg_per_image_s": lcg, "gsg_per_image_s": gsg, "train_per_image_s": train,
            "train_source": source}


def _guide_name(networks: str) -> str:
    for name in ROWS:
        if f"{name} guide" in networks:
            return name
    return networks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guidance-json", type=Path, default=RESULTS / "guidance.json")
    p.add_argument("--segmenter-json", type=Path, default=RESULTS / "segmenter.json")
    p.add_argument("--train-step-s", type=float, default=None, help="segmenter train step per image (overrides)")
    p.add_argument("--N", type=int, default=600)
    p.add_argument("--K", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--respaced-steps", type=int, default=25)
    p.add_argument("--pool", type=int, default=None, help="pool size M per domain (default K x batch)")
    p.add_argument("--pool-batch", type=int, default=None, help="translation batch of the pool (default: largest "
                                                                  "measured)")
    p.add_argument("--out", type=Path, default=RESULTS / "projection.json")
    args = p.parse_args(argv)
    if not args.guidance_json.is_file():
        print(f"projection: {args.guidance_json} not found; run benchmarks/bench_guidance.py first", file=sys.stderr)
        return 1
    guidance = json.loads(args.guidance_json.read_text())
    segmenter = json.loads(args.segmenter_json.read_text()) if args.segmenter_json.is_file() else None
    c = measured_costs(guidance, segmenter, args.train_step_s)
    N, K, B, S = args.N, args.K, args.batch, args.respaced_steps
    M = args.pool or K * B
    Bp = args.pool_batch or max(c["lcg_per_image_s"])
    per_iter = iteration_costs(c, N, K, B, S, M, Bp)
    totals = {k: K * sum(v) for k, v in per_iter.items()}
    result = {
        "benchmark": "projection",
        "measured_on": guidance.get("device_name") or guidance.get("device"),
        "measured": {"setting": guidance.get("setting"), "image_size": guidance.get("image_size"),
                     "networks": guidance.get("networks"), "options": guidance.get("options"), **c},
        "applies_to": ROWS.get(c["guide"], [c["guide"]]),
        "ptl": {"N": N, "K": K, "batch": B, "respaced_steps": S, "pool": M, "pool_batch": Bp},
        "total_s": totals,
        "total_days": {k: v / 86400 for k, v in totals.items()},
        "per_iteration_s": {k: {"n=1": v[0], f"n={N // 2}": v[N // 2 - 1], f"n={N}": v[-1]} for k, v in
                            per_iter.items()},
        "paper_reported_days": 2.3,
    }
    table = ["| schedule | steps per translation | wall time (days) |", "|---|---|---|"]
    steps = {"paper": "n", "respaced": f"min(n, {S})", "pooled": f"min(n, {S}), pool {M} at batch {Bp}",
             "pooled_paper_steps": f"n, pool {M} at batch {Bp}"}
    table += [f"| {k} | {steps[k]} | {result['total_days'][k]:.2f} |" for k in per_iter]
    result["markdown"] = "\n".join(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    png = args.out.with_suffix(".png")
    plot(per_iter, result, png)
    print(f"PTL (N={N}, K={K}, batch {B}) from {result['measured_on']}, {c['guide']} at "
          f"{guidance.get('image_size')}:\n{result['markdown']}\nwrote {args.out} and {png}")
    return 0


def plot(per_iter: dict[str, list[float]], result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, v in per_iter.items():
        ax.plot(range(1, len(v) + 1), v, label=f"{k} ({result['total_days'][k]:.2f} days)")
    ax.set_yscale("log")
    ax.set_xlabel("domain n")
    ax.set_ylabel("seconds per adaptation iteration")
    m = result["measured"]
    ax.set_title(f"PTL cost per iteration: {m['guide']} at {m['image_size']}, {result['measured_on']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
