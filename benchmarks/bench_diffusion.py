"""Benchmark of the diffusion core: training step, reverse step and phi^n translation throughput.

    python benchmarks/bench_diffusion.py            # full run
    python benchmarks/bench_diffusion.py --quick    # a minute or so: fewer repeats and depths, no paper train step

Writes ``benchmarks/results/diffusion.json`` (``--out`` to change).  Times are wall-clock seconds
(median over repeats after one warm-up).  Compare ratios measured in one run, not absolute times
across machines; the load average at start and end is recorded because a busy machine skews
absolute numbers.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dasslab.diffusion import Denoiser, NoiseSchedule, Sampler

SAMPLER_OPTIONS: dict = {}  # --autocast / --compile, set in main()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, repeats: int, device: torch.device, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def make_train_step(denoiser: Denoiser, schedule: NoiseSchedule, x0: torch.Tensor):
    """One Eq. 5 step with the paper's Adam settings (lr 2e-5, betas (0.9, 0.99))."""
    opt = torch.optim.Adam(denoiser.parameters(), lr=2e-5, betas=(0.9, 0.99))
    gen = torch.Generator(device=x0.device).manual_seed(0)

    def step():
        denoiser.train()
        opt.zero_grad(set_to_none=True)
        loss = schedule.training_loss(denoiser, x0, generator=gen)
        loss.backward()
        opt.step()
        return loss

    return step


def make_reverse_step(sampler: Sampler, schedule: NoiseSchedule, x: torch.Tensor, j: int):
    z = torch.randn_like(x)

    def step():
        sampler.reverse_step(x, j, schedule, z=z)

    return step


def bench_small(device, quick: bool, log) -> dict:
    batch, size = 32, 32
    repeats = 3 if quick else 10
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear().to(device)
    den = Denoiser.build(size, preset="small").to(device)
    x0 = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    out: dict = {"preset": "small", "image_size": [size, size], "batch": batch, "params": n_params(den)}

    out["train_step"] = timeit(make_train_step(den, schedule, x0), repeats, device)
    log(f"small train step: {out['train_step']['median_s'] * 1e3:.1f} ms")
    den.eval()
    sampler = Sampler(schedule, den, **SAMPLER_OPTIONS)
    out["reverse_step"] = timeit(make_reverse_step(sampler, schedule, x0, 300), repeats, device)
    log(f"small reverse step: {out['reverse_step']['median_s'] * 1e3:.1f} ms")

    depths = (50,) if quick else (50, 100, 200)
    rows = []
    for depth in depths:
        for num_steps in (25, None):
            gen = torch.Generator(device=device).manual_seed(0)

            def run(depth=depth, num_steps=num_steps, gen=gen):
                sampler.translate(x0, depth, num_steps=num_steps, generator=gen)

            r = timeit(run, 1, device, warmup=0)
            steps = len(sampler.stats)
            rows.append(
                {
                    "depth": depth,
                    "num_steps": num_steps if num_steps is not None else "full",
                    "reverse_steps": steps,
                    "seconds": r["median_s"],
                    "images_per_s": batch / r["median_s"],
                    "s_per_reverse_step": r["median_s"] / steps,
                }
            )
            log(f"small phi^{depth} ({steps} steps): {rows[-1]['images_per_s']:.1f} img/s")
    out["translate"] = rows
    return out


def bench_paper(device, quick: bool, log) -> dict:
    h, w, batch = 256, 512, 1
    torch.manual_seed(0)
    schedule = NoiseSchedule.linear().to(device)
    den = Denoiser.build((h, w), preset="ddpm_paper").to(device)
    x0 = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    out: dict = {"preset": "ddpm_paper", "image_size": [h, w], "batch": batch, "params": n_params(den)}
    den.eval()
    sampler = Sampler(schedule, den, **SAMPLER_OPTIONS)
    out["reverse_step"] = timeit(
        make_reverse_step(sampler, schedule, x0, 300), 1, device, warmup=0 if quick else 1
    )
    log(f"paper reverse step: {out['reverse_step']['median_s']:.2f} s")
    if quick:
        out["train_step"] = None
        log("paper train step: skipped (--quick)")
    else:
        out["train_step"] = timeit(make_train_step(den, schedule, x0), 1, device, warmup=0)
        log(f"paper train step: {out['train_step']['median_s']:.2f} s")
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if device.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and depths; skip the paper train step")
    p.add_argument("--no-paper", action="store_true", help="skip the 113 M-parameter ddpm_paper preset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", default=None, help="the sampler's denoiser autocast dtype (bf16/fp16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the denoiser in the sampler")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusion.json"))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    SAMPLER_OPTIONS.update(autocast_dtype=args.autocast, compile=args.compile)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(msg, flush=True)

    import diffusers

    result: dict = {
        "benchmark": "diffusion",
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        "sampler_options": dict(SAMPLER_OPTIONS),
    }
    t0 = time.perf_counter()
    result["small"] = bench_small(device, args.quick, log)
    small_rows = {(r["depth"], r["num_steps"]): r for r in result["small"]["translate"]}
    result["ratios"] = {
        f"respaced25_speedup_depth{d}": small_rows[(d, "full")]["seconds"] / small_rows[(d, 25)]["seconds"]
        for d in sorted({d for d, _ in small_rows})
    }
    result["ratios"]["small_train_over_reverse_step"] = (
        result["small"]["train_step"]["median_s"] / result["small"]["reverse_step"]["median_s"]
    )
    if not args.no_paper:
        result["ddpm_paper"] = bench_paper(device, args.quick, log)
        if result["ddpm_paper"]["train_step"] is not None:
            result["ratios"]["paper_train_over_reverse_step"] = (
                result["ddpm_paper"]["train_step"]["median_s"]
                / result["ddpm_paper"]["reverse_step"]["median_s"]
            )
    result["loadavg_end"] = list(os.getloadavg())
    result["total_s"] = time.perf_counter() - t0

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
