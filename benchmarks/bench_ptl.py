"""Cost of one PTL adaptation iteration as a function of the domain n, measured on the real module.

Three schedules (docs/method.md §3), each iteration = translate what it trains on + one training step on
translated + source (Eq. 12):

* ``paper``     every batch translated on the fly with n guided reverse steps (t_n = n);
* ``respaced``  the same chain respaced to ``--steps`` reverse steps;
* ``pooled``    a pool of M = K x batch source images translated once per domain at ``--pool-batch``
                with the respaced chain; an iteration pays 1/K of the pool plus its training step.

Runs on the digits benchmark with the small segmenter and denoiser (trained for a few steps
here: costs do not depend on the weights). Writes benchmarks/results/ptl.json and ptl.png.

    python benchmarks/bench_ptl.py [--device cuda] [--depths 1 25 50 100 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONF = HERE.parent / "conf"


def checkpoints(root: Path) -> tuple[str, str]:
    """A small source model and a small target DDPM, trained for a few steps (smoke size)."""
    from hydra import compose, initialize_config_dir

    from dasslab.commands.train import run

    os.environ.setdefault("DASSLAB_ROOT", str(root))
    common = ["debug=smoke", "dataset.image_size=[32,32]", "dataset.generate.n_train=120",
              "dataset.generate.n_val=40", "logger=none"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        src = compose("train", [*common, "stage=source", f"paths.output_dir={root / 'source'}"])
        dif = compose("train", [*common, "stage=diffusion", f"paths.output_dir={root / 'diffusion'}"])
    return run(src)["checkpoint"], run(dif)["checkpoint"]


def timed(fn, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depths", type=int, nargs="*", default=[1, 25, 50, 100, 200])
    ap.add_argument("--steps", type=int, default=25, help="respaced reverse steps")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pool-batch", type=int, default=32)
    ap.add_argument("--K", type=int, default=300)
    ap.add_argument("--out", default=str(HERE / "results" / "ptl.json"))
    args = ap.parse_args()
    from hydra import compose, initialize_config_dir

    from dasslab.ptl import SourceStream
    from dasslab.workflow.stages import build_modules

    root = Path(tempfile.mkdtemp(prefix="bench_ptl_"))
    src, dif = checkpoints(root)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["stage=adapt", "dataset.image_size=[32,32]", "dataset.generate.n_train=120",
                                "dataset.generate.n_val=40", "data.num_workers=0", "augment=none", "guidance=sgg",
                                f"segmenter.init_ckpt={src}", f"diffusion_ckpt={dif}", "ptl.N=1000",
                                f"segmenter.batch_size={args.batch}"])
    dm, m = build_modules(cfg)
    m = m.to(args.device)
    stream = SourceStream(dm.train_sets["source"], args.pool_batch, 0)
    big = stream.batch(0)
    xb, yb = big["image"].to(args.device), big["label"].to(args.device)
    x, y = xb[: args.batch], yb[: args.batch]
    opt = m.configure_optimizers()["optimizer"]

    def train_step(xt):
        m.train()
        opt.zero_grad(set_to_none=True)
        (m.loss_on(xt, y) + m.loss_on(x, y)).backward()
        opt.step()

    t_train = timed(lambda: train_step(x), 3)

    def translate(images, labels, n, steps):
        m.hparams.num_steps = steps
        return m.translate(images, labels, n, 0, 0).images

    rows = []
    for n in args.depths:
        reps = 1 if n > 50 else 2
        steps = min(n, args.steps)
        paper = timed(lambda n=n: train_step(translate(x, y, n, None)), reps)
        respaced = timed(lambda n=n, s=steps: train_step(translate(x, y, n, s)), reps)
        chunk = timed(lambda n=n, s=steps: translate(xb, yb, n, s), 1)
        pool_images = args.K * args.batch
        pooled = t_train + math.ceil(pool_images / args.pool_batch) * chunk / args.K
        rows.append({"n": n, "paper_s": paper, "respaced_s": respaced, "pooled_s": pooled,
                     "pool_chunk_s": chunk})
        print(f"n={n:4d}  paper {paper:.3f} s  respaced {respaced:.3f} s  pooled {pooled:.3f} s", flush=True)
    result = {"device": args.device, "threads": torch.get_num_threads(), "image": list(x.shape[-2:]),
              "batch": args.batch, "K": args.K, "respaced_steps": args.steps, "pool_batch": args.pool_batch,
              "train_step_s": t_train, "rows": rows,
              "note": "seconds per adaptation iteration (translation + one training step on translated + source)"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    from dasslab.visualize import save_curve

    ns = [r["n"] for r in rows]
    save_curve(out.with_suffix(".png"), ns, {k: [r[f"{k}_s"] for r in rows] for k in ("paper", "respaced", "pooled")},
               "domain n (translation depth)", "seconds per adaptation iteration",
               title=f"PTL iteration cost on {args.device} (digits 32x32, batch {args.batch})")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
