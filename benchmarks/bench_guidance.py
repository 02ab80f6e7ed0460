"""Benchmark of one guided reverse step: batched LCG vs the per-class loop vs a lower bound, GSG,
unguided; per-image cost by batch size; achieved TFLOP/s and the fraction of the device's peak.

    python benchmarks/bench_guidance.py --quick                      # digits size, batch 2 and 8 (CPU: ~1 min)
    python benchmarks/bench_guidance.py --device cuda --setting paper --batches 2 8 32
    python benchmarks/bench_guidance.py --device cuda --setting paper --autocast bf16 --compile

Variants, each a full reverse step ``x_k -> x_{k-1}`` through ``Sampler.reverse_step``:

``lcg``       SGG in LCG mode (:class:`dasslab.guidance.SemanticGuidance`): every present class of every
              image stacked along the batch dimension, one guide forward and one backward;
``gsg``       a GSG step; ``unguided`` a plain step;
``loop``      the per-class Python loop of Eq. 6-9 (one guide forward/backward per (image, class)), the
              reference (only at batches <= ``--loop-max-batch``);
``bound``     a lower bound for any LCG step: one denoiser forward plus one forward/backward of the guide
              on an already built stack of the masked copies, timed separately.

Per batch size: medians (repeats interleaved round-robin, order rotated each round), per-image
costs, ``lcg / bound`` (target <= 1.15), ``loop / lcg``, FLOPs of each variant counted with
``torch.utils.flop_counter.FlopCounterMode`` and the achieved TFLOP/s, with the fraction of the
device's dense peak for the precision used (table below; CPU: fraction null), CUDA peak memory.
On CUDA also the largest difference batched LCG vs the loop relative to the loop's largest value,
with TF32 on and off. Writes ``benchmarks/results/guidance.json`` (``--out``), which
``benchmarks/projection.py`` turns into the wall time of PTL.

Settings: ``digits`` 32x32, ``small`` denoiser and ``small`` segmenter (11 classes), 2-4 classes
per image; ``paper`` 256x512 (``--size`` to change), ``ddpm_paper`` denoiser, DeepLab-V2 R101
(19 classes), 8 classes per image plus ignore pixels. Random weights: timing does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dasslab.diffusion import Denoiser, NoiseSchedule, Sampler  # noqa: E402
from dasslab.guidance import SemanticGuidance, class_copies, validate_guidance  # noqa: E402

IGNORE = 255
#: Dense peak TFLOP/s by device-name fragment and precision (vendor datasheets, SXM parts; no sparsity).
PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0, "fp16": 362.0},
    "RTX 4090": {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2},
    "A10G": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")


def peak_for(name: str) -> dict | None:
    for key, peak in PEAK_TFLOPS.items():  # the more specific names come first
        if key in name:
            return peak
    return None


def precision(device: torch.device, autocast: str | None) -> str:
    if autocast:
        return "bf16" if autocast.startswith("bf") else "fp16"
    return "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lcg_grad_loop(x, label, preprocess, net, reduction="sum", ignore_index=IGNORE):
    """Reference LCG: one guide forward/backward per (image, class) pair, pasted with the masks."""
    grad = torch.zeros_like(x)
    with torch.enable_grad():
        for i in range(x.shape[0]):
            for c in torch.unique(label[i]).tolist():
                if c == ignore_index:
                    continue
                xi = x[i : i + 1].detach().requires_grad_(True)
                m = (label[i : i + 1] == c)[:, None]
                logits = net(preprocess(xi) * m.to(x.dtype))
                target = torch.where(m[:, 0], c, ignore_index)
                loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
                (g,) = torch.autograd.grad(loss, xi)
                grad[i] += (m * g)[0]
    return grad


def digits_labels(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Background (class 10) with 1-3 square digit blobs of classes 0-9 per image."""
    label = torch.full((n, size, size), 10, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            c = int(torch.randint(0, 10, (1,), generator=gen))
            s = int(torch.randint(size // 4, size // 2, (1,), generator=gen))
            y, x = (int(v) for v in torch.randint(0, size - s, (2,), generator=gen))
            label[i, y : y + s, x : x + s] = c
    return label


def paper_labels(n: int, h: int, w: int) -> torch.Tensor:
    """A street-like layout with exactly 8 classes (trainIds) and a band of ignore pixels, per image."""
    label = torch.full((n, h, w), IGNORE, dtype=torch.long)
    label[:, : h // 4] = 10  # sky
    label[:, h // 4 : h // 2] = 2  # building
    label[:, h // 4 : h // 2, : w // 4] = 8  # vegetation
    label[:, h // 2 : h * 3 // 4] = 0  # road
    label[:, h * 3 // 4 : h - 8] = 1  # sidewalk
    label[:, h // 2 : h * 5 // 8, w // 2 : w * 5 // 8] = 13  # car
    label[:, h * 3 // 8 : h * 3 // 4, w * 3 // 4 : w * 3 // 4 + 16] = 11  # person
    label[:, h // 8 : h * 3 // 4, w // 3 : w // 3 + 6] = 5  # pole
    return label  # the bottom 8 rows stay ignore (ego vehicle)


def build(setting: str, size: tuple[int, int], device: torch.device):
    from dasslab.segmentation import build_segmenter

    torch.manual_seed(0)
    preset, guide, classes = ("small", "small", 11) if setting == "digits" else ("ddpm_paper", "deeplabv2_r101", 19)
    denoiser = Denoiser.build(size, preset=preset).eval().requires_grad_(False).to(device)
    seg = build_segmenter(guide, classes).eval().requires_grad_(False).to(device)
    return denoiser, seg, f"{preset} denoiser, {guide} guide ({classes} classes)"


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_batch(args, device, denoiser, seg, batch: int, log) -> dict:
    h, w = args.size
    gen = torch.Generator().manual_seed(batch)
    x = (torch.rand(batch, 3, h, w, generator=gen) * 2 - 1).to(device)
    label = (digits_labels(batch, h, gen) if args.setting == "digits" else paper_labels(batch, h, w)).to(device)
    schedule = NoiseSchedule.linear().to(device)
    sampler = Sampler(schedule, denoiser, autocast_dtype=args.autocast, compile=args.compile)
    j, z = 400, torch.randn(x.shape, generator=gen).to(device)
    copies = class_copies(label, IGNORE)
    common = {"scale": 1.0, "max_batch": args.max_batch, "autocast_dtype": args.guide_autocast,
              "record_stats": False}
    lcg = SemanticGuidance(seg.normalize, seg.forward_normalized, label, validate_guidance({**common, "gsg": False}))
    gsg = SemanticGuidance(seg.normalize, seg.forward_normalized, label, validate_guidance({**common, "lcg": False}))
    with torch.no_grad():
        stack0 = seg.normalize(x)[copies.image_index] * copies.masks.to(x.dtype)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if args.guide_autocast.startswith("bf") else torch.float16)
           if args.guide_autocast else contextlib.nullcontext())

    def guide_fwd_bwd():  # (stack + 0: FlopCounterMode's module hooks reject a leaf as a module's input)
        stack = stack0.detach().requires_grad_(True)
        with torch.enable_grad(), amp:
            loss = F.cross_entropy(seg.forward_normalized(stack + 0), copies.targets, ignore_index=IGNORE,
                                   reduction="sum")
        torch.autograd.grad(loss, stack)

    def loop_guidance(x_t, mean, variance, step, n):
        return mean - variance * lcg_grad_loop(x_t, label, seg.normalize, seg.forward_normalized)

    t_batch = torch.full((batch,), j, dtype=torch.long, device=device)
    amp_d = (torch.autocast(device.type, dtype=sampler.autocast_dtype) if sampler.autocast_dtype
             else contextlib.nullcontext())

    def denoiser_fwd():
        with torch.no_grad(), amp_d:
            sampler._net(x, t_batch)

    variants = {
        "lcg": lambda: sampler.reverse_step(x, j, schedule, guidance=lcg, z=z),
        "gsg": lambda: sampler.reverse_step(x, j, schedule, guidance=gsg, z=z),
        "unguided": lambda: sampler.reverse_step(x, j, schedule, z=z),
        "denoiser_fwd": denoiser_fwd,
        "guide_fwd_bwd": guide_fwd_bwd,
    }
    if batch <= args.loop_max_batch:
        variants["loop"] = lambda: sampler.reverse_step(x, j, schedule, guidance=loop_guidance, z=z)
    peak_mem = {}
    for key, fn in variants.items():  # warm-up (and compilation), one at a time for peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup):
            fn()
        _sync(device)
        if device.type == "cuda":
            peak_mem[key] = torch.cuda.max_memory_allocated(device) / 2**30
    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for r in range(args.repeats):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            _sync(device)
            t0 = time.perf_counter()
            variants[key]()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = {k: flops_of(variants[k]) for k in ("lcg", "gsg", "unguided", "guide_fwd_bwd")}
    bound = med["denoiser_fwd"] + med["guide_fwd_bwd"]
    name = device_name(device)
    peak = peak_for(name) if device.type == "cuda" else None
    prec = precision(device, args.autocast or args.guide_autocast)
    tflops = {k: flops[k] / med[k] / 1e12 for k in flops}
    out = {
        "batch": batch,
        "present_copies": len(copies),
        "median_s": med,
        "per_image_s": {k: v / batch for k, v in med.items()},
        "bound_s": bound,
        "ratio_lcg_over_bound": med["lcg"] / bound,
        "ratio_gsg_over_unguided": med["gsg"] / med["unguided"],
        "ratio_lcg_over_unguided": med["lcg"] / med["unguided"],
        "flops": flops,
        "achieved_tflops": tflops,
        "precision": prec,
        "peak_tflops": peak[prec] if peak else None,
        "fraction_of_peak": {k: v / peak[prec] for k, v in tflops.items()} if peak else None,
        "cuda_peak_gib": peak_mem or None,
    }
    if "loop" in med:
        out["ratio_loop_over_lcg"] = med["loop"] / med["lcg"]
        out["lcg_vs_loop"] = lcg_vs_loop(device, x, label, seg, lcg)
    log(f"[batch {batch}] " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items())
        + f"; lcg/bound {out['ratio_lcg_over_bound']:.3f}; lcg {tflops['lcg']:.3g} TFLOP/s")
    return out


def lcg_vs_loop(device, x, label, seg, lcg) -> dict:
    """max |batched - loop| / max |loop|; on CUDA with TF32 on and off (CPU: one value)."""
    def diff():
        ref = lcg_grad_loop(x, label, seg.normalize, seg.forward_normalized)
        got = lcg.gradient(x, "lcg")[0]
        return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))

    if device.type != "cuda":
        return {"fp32": diff()}
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        out = {}
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            out["tf32_on" if tf32 else "tf32_off"] = diff()
        return out
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits setting, batches 2 and 8, 3 repeats")
    p.add_argument("--setting", choices=["digits", "paper"], default=None)
    p.add_argument("--size", type=int, nargs=2, default=None, help="H W (digits 32 32, paper 256 512)")
    p.add_argument("--batches", type=int, nargs="*", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--loop-max-batch", type=int, default=8, help="time the per-class loop up to this batch")
    p.add_argument("--autocast", default=None, help="denoiser autocast dtype (bf16/fp16)")
    p.add_argument("--guide-autocast", default=None, help="guide autocast dtype (bf16/fp16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    p.add_argument("--max-batch", default=None, help="LCG copies per guide pass: an int, auto or all")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "guidance.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.setting = args.setting or ("paper" if device.type == "cuda" and not args.quick else "digits")
    args.size = tuple(args.size or ((32, 32) if args.setting == "digits" else (256, 512)))
    args.batches = args.batches or ([2, 8] if args.quick or device.type == "cpu" else [2, 8, 32])
    args.repeats = args.repeats or (3 if args.quick else 10)
    if args.max_batch not in (None, "auto", "all"):
        args.max_batch = int(args.max_batch)

    def log(msg: str) -> None:
        print(msg, flush=True)

    denoiser, seg, desc = build(args.setting, args.size, device)
    result: dict = {
        "benchmark": "guidance",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        "setting": args.setting,
        "image_size": list(args.size),
        "networks": desc,
        "options": {"autocast": args.autocast, "guide_autocast": args.guide_autocast, "compile": args.compile,
                    "max_batch": args.max_batch, "tf32": bool(torch.backends.cudnn.allow_tf32)},
        "repeats": args.repeats,
        "target_ratio_lcg_over_bound": 1.15,
        "batches": {},
    }
    t0 = time.perf_counter()
    for b in args.batches:
        result["batches"][str(b)] = bench_batch(args, device, denoiser, seg, b, log)
    rows = result["batches"]
    lo, hi = str(min(args.batches)), str(max(args.batches))
    result["per_image_lcg_largest_over_smallest_batch"] = (
        rows[hi]["per_image_s"]["lcg"] / rows[lo]["per_image_s"]["lcg"])
    result["wall_s"] = time.perf_counter() - t0
    result["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
