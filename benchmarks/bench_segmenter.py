"""Benchmark of the segmenters: parameter counts and step times on this machine.

    python benchmarks/bench_segmenter.py            # all four models at 256x512
    python benchmarks/bench_segmenter.py --quick    # small + deeplabv2_r101, fewer repeats

For each model (random init, 19 classes) it times, after one warm-up call:

- ``train_step``: forward + backward into all parameters (train mode), i.e. one
  segmenter fine-tuning step without the optimiser update;
- ``input_grad``: forward + backward to the *input* only, parameters frozen, eval
  mode: the guide's work per guided reverse step in SGG;
- ``inference``: forward under ``torch.no_grad`` (eval mode).

Batch 1 at 256x512 for every model, batch 2 as well for ``small``, plus ``small``
on the digits workload (batch 32 at 32x32, fp32 and bf16 autocast); ``--batches``
adds batch sizes at HxW for every model (fp32 and bf16). ``--device cuda`` runs it
all on the GPU (synchronised timing, peak memory per case).
Writes ``benchmarks/results/segmenter.json`` (``--out`` to change). Times are
wall-clock seconds (median over repeats). Compare ratios measured in one run;
the load average at start and end is recorded because a busy machine skews
absolute numbers.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dasslab.segmentation import SEGMENTER_NAMES, build_segmenter

NUM_CLASSES = 19


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, repeats: int, warmup: int = 1, device: torch.device | None = None) -> dict:
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "repeats": repeats}


def bench_case(model, batch: int, h: int, w: int, repeats: int, bf16: bool = False, what=("train", "guide", "infer"),
               device: torch.device | None = None):
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, h, w, generator=gen) * 2 - 1).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch, h, w), generator=gen).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    out = {"input": [batch, 3, h, w], "dtype": "bf16-autocast" if bf16 else "fp32"}

    def train_step():
        model.train()
        model.zero_grad(set_to_none=True)
        with amp:
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    def input_grad():
        model.eval()
        xi = x.clone().requires_grad_(True)
        with amp:
            loss = F.cross_entropy(model(xi), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xi)
        return g

    def inference():
        model.eval()
        with torch.no_grad(), amp:
            model(x)

    if "train" in what:
        out["train_step"] = timeit(train_step, repeats, device=device)
        model.zero_grad(set_to_none=True)
    if "guide" in what:
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            out["input_grad"] = timeit(input_grad, repeats, device=device)
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
    if "infer" in what:
        out["inference"] = timeit(inference, repeats, device=device)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small + deeplabv2_r101 only, fewer repeats")
    ap.add_argument("--models", nargs="*", default=None, help=f"subset of {list(SEGMENTER_NAMES)}")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batches", type=int, nargs="*", default=None,
                    help="extra batch sizes at HxW for every model (GPU: e.g. 2 8 32)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "segmenter.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["small", "deeplabv2_r101"] if args.quick else list(SEGMENTER_NAMES))
    unknown = [m for m in models if m not in SEGMENTER_NAMES]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; valid: {list(SEGMENTER_NAMES)}")
    repeats = args.repeats or (1 if args.quick else 3)
    h, w = args.height, args.width

    meta = {
        "benchmark": "segmenter",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeats": repeats,
        "warmup": 1,
        "num_classes": NUM_CLASSES,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
    }
    results = []
    t_all = time.perf_counter()
    for name in models:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = build_segmenter(name, NUM_CLASSES).to(device)
        entry = {
            "model": name,
            "params": model.num_parameters(),
            "trainable_params": model.num_parameters(trainable_only=True),
            "build_s": round(time.perf_counter() - t0, 2),
            "cases": [],
        }
        print(f"[{name}] {entry['params'] / 1e6:.2f} M params, built in {entry['build_s']} s", flush=True)
        cases = [(1, h, w, False)] + [(b, h, w, bf16) for b in args.batches or [] for bf16 in (False, True)]
        if name == "small":
            cases += [(2, h, w, False), (32, 32, 32, False), (32, 32, 32, True)]
        for batch, ch, cw, bf16 in cases:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            case = bench_case(model, batch, ch, cw, repeats, bf16=bf16, device=device)
            if device.type == "cuda":
                case["cuda_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            entry["cases"].append(case)
            times = ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in case.items() if isinstance(v, dict))  # noqa
            print(f"  batch {batch} {ch}x{cw} {case['dtype']}: {times}", flush=True)
        results.append(entry)
        del model
    meta["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    meta["total_s"] = round(time.perf_counter() - t_all, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
