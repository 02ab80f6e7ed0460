"""Benchmark of one LCG-guided reverse step: per-class loop vs batched vs a lower bound.

    python benchmarks/bench_guidance.py            # digits size and the paper's size (slow on CPU)
    python benchmarks/bench_guidance.py --quick    # digits size only (seconds)

Variants, each a full reverse step ``x_k -> x_{k-1}`` through ``Sampler.reverse_step``:

``loop``     the per-class Python loop of Eq. 6-9 (one guide forward/backward per (image, class)
             pair), defined below as the reference — the library has no loop;
``batched``  :class:`dasslab.guidance.SemanticGuidance` in LCG mode: every present class of every
             image stacked along the batch dimension, one guide forward and one backward;
``bound``    a lower bound for any LCG step, the sum of two separately timed parts: one denoiser
             forward (``denoiser_fwd``) plus one forward/backward of the guide on an already
             built stack of the masked copies (``guide_fwd_bwd``: no preprocessing, masking,
             label handling or mean update).

Reported: ``batched / bound`` (the overhead of the implementation; target <= 1.15) and
``loop / batched`` (the speed-up of batching). Also ``gsg`` (a GSG step) and ``unguided`` (a plain
step) at digits size. Repeats are interleaved round-robin across the variants (the order rotates
every round) so that a change of machine load hits all of them alike; medians are reported. Writes
``benchmarks/results/guidance.json`` (``--out`` to change). Compare ratios from one run, not
absolute times across machines; the load average at start and end is recorded.

Settings:
``digits``  32x32, batch 8, the ``small`` denoiser preset, the ``small`` segmenter (11 classes) as
            guide, 1-3 digit blobs per image on background (2-4 classes present per image).
``paper``   256x512, batch 1, the ``ddpm_paper`` denoiser preset, DeepLab-V2 ResNet-101
            (19 classes) as guide, 8 classes present plus some ignore pixels. Random weights:
            timing does not depend on them. CPU: 1 iteration by default (``--paper-repeats``).
"""

from __future__ import annotations

import argparse
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

from dasslab.diffusion import Denoiser, NoiseSchedule, Sampler
from dasslab.guidance import SemanticGuidance, class_copies

IGNORE = 255


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_guide(name: str, num_classes: int):
    """(preprocess, net, description) from dasslab.segmentation, or a stand-in if it is missing."""
    try:
        from dasslab.segmentation import build_segmenter
    except ImportError as err:  # another part of the project; keep the benchmark usable without it
        conv = torch.nn.Sequential(
            torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, num_classes, 1)
        ).eval()
        return (lambda x: x), conv, f"stand-in 2-layer conv net (dasslab.segmentation unavailable: {err})"
    seg = build_segmenter(name, num_classes).eval()
    return seg.normalize, seg.forward_normalized, f"build_segmenter({name!r}, {num_classes})"


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


def paper_label(h: int, w: int) -> torch.Tensor:
    """A street-like layout with exactly 8 classes (trainIds) and a band of ignore pixels."""
    label = torch.full((1, h, w), IGNORE, dtype=torch.long)
    label[0, : h // 4] = 10  # sky
    label[0, h // 4 : h // 2] = 2  # building
    label[0, h // 4 : h // 2, : w // 4] = 8  # vegetation
    label[0, h // 2 : h * 3 // 4] = 0  # road
    label[0, h * 3 // 4 : h - 8] = 1  # sidewalk
    label[0, h // 2 : h * 5 // 8, w // 2 : w * 5 // 8] = 13  # car
    label[0, h * 3 // 8 : h * 3 // 4, w * 3 // 4 : w * 3 // 4 + 16] = 11  # person
    label[0, h // 8 : h * 3 // 4, w // 3 : w // 3 + 6] = 5  # pole
    return label  # the bottom 8 rows stay ignore (ego vehicle)


def bench_setting(name, denoiser, preprocess, net, guide_desc, x, label, repeats, warmup, extra, log) -> dict:
    device = x.device
    schedule = NoiseSchedule.linear().to(device)
    sampler = Sampler(schedule, denoiser)
    j = 400  # a mid-chain reverse step of the full schedule
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(device)
    t_batch = torch.full((x.shape[0],), j, dtype=torch.long, device=device)
    copies = class_copies(label, IGNORE)
    n_copies = len(copies)

    lcg = SemanticGuidance(preprocess, net, label, scale=1.0, use_gsg=False, record_stats=False)
    gsg = SemanticGuidance(preprocess, net, label, scale=1.0, use_lcg=False, record_stats=False)

    last: dict[str, torch.Tensor] = {}  # the gradients of the timed calls, compared afterwards

    def loop_guidance(x_t, step, num_steps):
        last["loop"] = lcg_grad_loop(x_t, label, preprocess, net)
        return last["loop"]

    def batched_guidance(x_t, step, num_steps):
        last["batched"] = lcg(x_t, step, num_steps)
        return last["batched"]

    # the bound's guide part: a prebuilt leaf stack of the masked copies, one forward and backward
    with torch.no_grad():
        stack0 = preprocess(x)[copies.image_index] * copies.masks.to(x.dtype)
    targets = copies.targets

    def guide_fwd_bwd():
        stack = stack0.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(net(stack), targets, ignore_index=IGNORE, reduction="sum")
            torch.autograd.grad(loss, stack)

    def denoiser_fwd():
        with torch.no_grad():
            denoiser(x, t_batch)

    variants = {
        "loop": lambda: sampler.reverse_step(x, j, schedule, guidance=loop_guidance, z=z),
        "batched": lambda: sampler.reverse_step(x, j, schedule, guidance=batched_guidance, z=z),
        "denoiser_fwd": denoiser_fwd,
        "guide_fwd_bwd": guide_fwd_bwd,
    }
    if extra:
        variants["gsg"] = lambda: sampler.reverse_step(x, j, schedule, guidance=gsg, z=z)
        variants["unguided"] = lambda: sampler.reverse_step(x, j, schedule, z=z)

    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    for r in range(warmup + repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order every round
            fn = variants[key]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
        if r >= warmup:
            log(
                f"[{name}] round {r + 1 - warmup}/{repeats}: "
                + ", ".join(f"{k} {v[-1]:.4f}s" for k, v in times.items())
            )
        else:
            log(f"[{name}] warm-up round {r + 1}/{warmup} done")

    # correctness of what was timed: batched LCG == the loop reference
    max_abs_diff = float((last["batched"] - last["loop"]).abs().max())
    scale_ref = float(last["loop"].abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    bound = med["denoiser_fwd"] + med["guide_fwd_bwd"]
    out = {
        "image_size": list(x.shape[-2:]),
        "batch": int(x.shape[0]),
        "guide": guide_desc,
        "present_copies": n_copies,
        "copies_per_image": [int((copies.image_index == i).sum()) for i in range(x.shape[0])],
        "repeats": repeats,
        "warmup": warmup,
        "median_s": med,
        "all_s": times,
        "bound_s": bound,
        "ratio_batched_over_bound": med["batched"] / bound,
        "ratio_loop_over_batched": med["loop"] / med["batched"],
        "batched_vs_loop_max_abs_diff": max_abs_diff,
        "loop_grad_max_abs": scale_ref,
    }
    if extra:
        out["ratio_batched_over_unguided"] = med["batched"] / med["unguided"]
        out["ratio_gsg_over_unguided"] = med["gsg"] / med["unguided"]
    return out


def bench_digits(device, repeats, log) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    denoiser = Denoiser.build(32, preset="small").eval().to(device)
    preprocess, net, desc = _load_guide("small", 11)
    if isinstance(net, torch.nn.Module):
        net.to(device)
    else:
        net.__self__.to(device)
    x = (torch.rand(8, 3, 32, 32, generator=gen) * 2 - 1).to(device)
    label = digits_labels(8, 32, gen).to(device)
    return bench_setting("digits", denoiser, preprocess, net, desc, x, label, repeats, 2, True, log)


def bench_paper(device, repeats, log) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    denoiser = Denoiser.build((256, 512), preset="ddpm_paper").eval().to(device)
    preprocess, net, desc = _load_guide("deeplabv2_r101", 19)
    (net if isinstance(net, torch.nn.Module) else net.__self__).to(device)
    log(
        f"[paper] built denoiser ({sum(p.numel() for p in denoiser.parameters()) / 1e6:.1f} M) and guide {desc} "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    x = (torch.rand(1, 3, 256, 512, generator=gen) * 2 - 1).to(device)
    label = paper_label(256, 512).to(device)
    return bench_setting("paper", denoiser, preprocess, net, desc, x, label, repeats, 0, False, log)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="digits size only")
    p.add_argument(
        "--repeats", type=int, default=10, help="timed rounds at digits size (after 2 warm-up rounds)"
    )
    p.add_argument("--paper-repeats", type=int, default=1, help="timed rounds at 256x512 (no warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "guidance.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def log(msg: str) -> None:
        print(msg, flush=True)

    result: dict = {
        "benchmark": "guidance",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        "quick": bool(args.quick),
        "target_ratio_batched_over_bound": 1.15,
    }
    t0 = time.perf_counter()
    result["digits"] = bench_digits(device, args.repeats, log)
    d = result["digits"]
    log(
        f"digits: batched/bound {d['ratio_batched_over_bound']:.3f}, loop/batched {d['ratio_loop_over_batched']:.2f}"
    )
    if not args.quick:
        result["paper"] = bench_paper(device, args.paper_repeats, log)
        pp = result["paper"]
        log(
            f"paper: batched/bound {pp['ratio_batched_over_bound']:.3f}, "
            f"loop/batched {pp['ratio_loop_over_batched']:.2f}"
        )
    result["wall_s"] = time.perf_counter() - t0
    result["loadavg_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
