"""CPU speed of the two small networks, fp32 vs bf16 autocast (issue 9, task 7).

Measures forward+backward of the small segmenter (batch 64, 32x32) and the small diffusion
UNet (batch 32, 32x32), and the cosine between the guide's input gradients (the quantity
guidance uses, Eq. 9/10) computed in fp32 and under bf16 autocast. Writes bench_cpu.json.

    .venv/bin/python experiments/digits_demo/bench_cpu.py [--threads 1] [--reps 3]

bf16 autocast only pays on CPUs with native bf16 (AVX512-BF16 / AMX); on AVX2-only CPUs
(this machine: AMD EPYC, Zen 3) oneDNN emulates it and it is several times slower.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dasslab.diffusion.unet import Denoiser
from dasslab.segmentation import build_segmenter


def timed(fn, reps: int = 5) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpu_flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    out = {"threads": torch.get_num_threads(), "avx512_bf16": "avx512_bf16" in cpu_flags,
           "amx_bf16": "amx_bf16" in cpu_flags}
    seg = build_segmenter("small", 11).train()
    x, y = torch.rand(64, 3, 32, 32) * 2 - 1, torch.randint(0, 11, (64, 32, 32))

    def seg_step(bf16: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(seg(x), y)
            loss.backward()
        return run

    unet = Denoiser.build((32, 32), 3, "small").train()
    xt, t = torch.randn(32, 3, 32, 32), torch.randint(0, 1000, (32,))

    def unet_step(bf16: bool):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.mse_loss(unet(xt, t).float(), xt)
            loss.backward()
        return run

    for name, step in (("segmenter_b64", seg_step), ("unet_b32", unet_step)):
        fp32, bf16 = timed(step(False), args.reps), timed(step(True), args.reps)
        out[name] = {"fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4), "speedup": round(fp32 / bf16, 2)}
        print(name, out[name], flush=True)

    seg.eval()
    xg = (torch.rand(16, 3, 32, 32) * 2 - 1).requires_grad_(True)

    def grad(bf16: bool) -> torch.Tensor:
        xg.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = seg(xg)
        F.cross_entropy(logits.float(), y[:16], reduction="sum").backward()
        return xg.grad.flatten().clone()

    g32, g16 = grad(False), grad(True)
    out["guide_grad_cosine_bf16_vs_fp32"] = round(float(F.cosine_similarity(g32, g16, dim=0)), 5)
    print(out, flush=True)
    name = f"bench_cpu_t{out['threads']}.json"
    Path(__file__).with_name(name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
