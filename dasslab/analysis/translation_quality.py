"""Translation quality: label consistency and domain score of phi^n, guided and not (docs/method.md §7).

Where target labels exist (the digits benchmark, or a folder pair with a labeled target
train split), translation itself can be measured on labeled source images:

* **label consistency** (:mod:`dasslab.analysis.judge`) — mIoU (%) of the *judge* (a
  segmenter trained on labeled source and target) on translated images against the
  *source* labels, over the foreground classes (``consistency``) and all classes
  (``consistency_all``);
* **domain score** (:mod:`dasslab.analysis.domain_score`) — mean probability of "target"
  under a source-vs-target classifier trained with Eq. 2 noise on both domains, so that
  left-over noise does not read as "target".

:func:`measure` runs each setting of ``quality.settings`` at its depths (a setting may list
its own ``depths``; default ``quality.depths``) through :func:`dasslab.guidance.translation.translate_images`
— the one seed rule, so every setting at one depth starts from the same noise and differences
come from the guidance alone — plus an optional lambda sweep; it writes
``translation_quality.json`` and pictures (curves over n, a grid of examples).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dasslab.analysis.domain_score import domain_score, train_domain_classifier
from dasslab.analysis.image_stats import high_frequency_energy
from dasslab.analysis.judge import foreground_classes, label_consistency
from dasslab.errors import ConfigError
from dasslab.guidance.translation import translate_images
from dasslab.utils.io import atomic_write_text
from dasslab.utils.progress import progress
from dasslab.visualize import grid, overlay, save_curve, save_png, to_uint8

log = logging.getLogger(__name__)

__all__ = ["measure", "quality_markdown", "quality_stage", "setting_plan"]


def _stack(ds, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = len(ds) if limit is None else min(int(limit), len(ds))
    items = [ds[i] for i in range(n)]
    labels = [it.get("label") for it in items]
    y = torch.stack(labels) if labels and all(isinstance(v, torch.Tensor) for v in labels) else None
    return torch.stack([it["image"] for it in items]), y


SAMPLING_KEYS = ("num_steps", "variance")   # per-setting sampling overrides (not guidance keys)


def setting_plan(q) -> list[tuple[str, dict, int]]:
    """``(name, guidance, depth)`` for every setting and each of its depths, in config order.

    A setting may carry ``depths`` and the sampling keys ``num_steps`` / ``variance`` (defaults:
    ``quality.num_steps`` / ``quality.variance``); :func:`sampling_of` reads them back."""
    plan = []
    for name, s in q.settings.items():
        s = dict(OmegaConf.to_container(s, resolve=True)) if not isinstance(s, dict) else dict(s)
        depths = s.pop("depths", None) or list(q.depths)
        plan += [(str(name), s, int(d)) for d in depths]
    return plan


def sampling_of(q, gcfg: dict) -> tuple[dict, dict]:
    """Split a setting into (guidance keys, sampling: ``{"num_steps", "variance"}``)."""
    g = {k: v for k, v in gcfg.items() if k not in SAMPLING_KEYS}
    sampling = {"num_steps": gcfg.get("num_steps", q.num_steps),
                "variance": gcfg.get("variance", q.get("variance", "beta"))}
    return g, sampling


def _translate(sampler, images, labels, depth, q, guide, guidance, arrangement, seed, device):
    """All ``images`` through translate_images; returns (images, mean shift/sigma, skipped steps)."""
    guidance, sampling = sampling_of(q, guidance)
    outs, shifts, skipped = [], [], 0
    for _, tr in translate_images(sampler, images, labels, depth, sampling["num_steps"], guide=guide,
                                  guidance=guidance, arrangement=arrangement, batch_size=q.batch_size, seed=seed,
                                  device=device, variance=sampling["variance"]):
        outs.append(tr.images.detach().cpu())
        shifts += tr.shift_over_sigma
        skipped += tr.skipped
    return torch.cat(outs), (sum(shifts) / len(shifts) if shifts else 0.0), skipped


def measure(cfg: DictConfig, judge_ckpt: str, diffusion_ckpt: str, guide_ckpt: str, out_dir: str | Path) -> dict:
    """Consistency and domain score for every (setting, depth) of ``cfg.quality``; see the module docstring."""
    from dasslab.checkpoints import load_diffusion, load_segmenter
    from dasslab.data.datamodule import build_dataset

    q = cfg.quality
    out = Path(out_dir)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    src_x, src_y = _stack(build_dataset(cfg.dataset, q.source_split, train=False, limit=q.num_images,
                                        resize_labels=True))
    val_x, val_y = _stack(build_dataset(cfg.dataset, "target_val", train=False, limit=q.num_images,
                                        resize_labels=True))
    n_clf = int(q.get("classifier_images", 1000))
    tgt_x, _ = _stack(build_dataset(cfg.dataset, "target", train=False, resize_labels=True, limit=n_clf))
    src_train_x, _ = _stack(build_dataset(cfg.dataset, "source", train=False, resize_labels=True, limit=n_clf))
    if src_y is None or src_x.shape[-2:] != src_y.shape[-2:]:
        raise ConfigError(f"quality.source_split={q.source_split}: needs labels at the working size")
    judge_module = load_segmenter(judge_ckpt, setting="quality.judge_ckpt")
    judge = judge_module.model.to(dev).eval()
    guide = load_segmenter(guide_ckpt, setting="guide_ckpt").model.to(dev).eval().requires_grad_(False)
    k = judge.num_classes
    fg = foreground_classes(judge_module.class_names, q.get("background_classes", ["background"]))
    diffusion = load_diffusion(diffusion_ckpt, setting="diffusion_ckpt").to(dev)
    sampler = diffusion.sampler()
    schedule = diffusion.schedule.cpu()
    depths_all = {d for _, _, d in setting_plan(q)}
    if q.get("lambda_sweep") and q.lambda_sweep.scales:
        depths_all.add(int(q.lambda_sweep.depth))
    clf = train_domain_classifier(src_train_x, tgt_x, schedule.q_sample, t_max=max(depths_all),
                                  steps=int(q.classifier_steps), seed=int(cfg.seed), device=dev)
    noise_t = int(q.get("noise_check_t", 300))
    g = torch.Generator().manual_seed(int(cfg.seed))
    noisy_src = schedule.q_sample(src_x, torch.full((len(src_x),), noise_t - 1),
                                  torch.randn(src_x.shape, generator=g))

    def consistency(images, labels):
        c = label_consistency(judge, images, labels, k, foreground=fg)
        return {"consistency": c["miou_fg"], "consistency_all": c["miou"]}

    result = {
        "judge_ckpt": str(judge_ckpt), "foreground_classes": fg,
        "domain_score": "mean P(target) of a CNN trained on source vs target with Eq. 2 noise "
                        f"(t < {max(depths_all)}) on both domains",
        "reference": {
            "source": {**consistency(src_x, src_y), "domain_score": domain_score(clf, src_x),
                       "hf": high_frequency_energy(src_x)},
            "target_val": {**consistency(val_x, val_y), "domain_score": domain_score(clf, val_x),
                           "hf": high_frequency_energy(val_x)},
            f"source_noise_t{noise_t}": {**consistency(noisy_src, src_y), "domain_score": domain_score(clf, noisy_src)},
        },
        "depths": sorted({d for _, _, d in setting_plan(q)}), "num_steps": q.num_steps, "num_images": len(src_x),
        "settings": {}, "lambda_sweep": {},
    }
    arrangement = OmegaConf.to_container(cfg.arrangement, resolve=True)
    plan = setting_plan(q)
    sw = q.get("lambda_sweep")
    scales = list(sw.scales) if sw else []
    examples: dict[tuple[str, int], torch.Tensor] = {}
    bar = progress(total=len(plan) + len(scales), desc="translation quality")
    for name, gcfg, depth in plan:
        t1 = time.perf_counter()
        imgs, shift, skipped = _translate(sampler, src_x, src_y, depth, q, guide, gcfg, arrangement,
                                          int(cfg.seed), dev)
        entry = result["settings"].setdefault(name, {"guidance": gcfg, "rows": []})
        entry["rows"].append({"depth": depth, **consistency(imgs, src_y), "domain_score": domain_score(clf, imgs),
                              "hf": high_frequency_energy(imgs), **dict(zip(("num_steps", "variance"),
                                                                           sampling_of(q, gcfg)[1].values())),
                              "shift_over_sigma_mean": shift, "skipped_steps": skipped,
                              "seconds": round(time.perf_counter() - t1, 1)})
        examples[(name, depth)] = imgs[: q.grid_images]
        bar.update()
    if scales:
        base = {k2: v for k2, v in dict(OmegaConf.to_container(q.settings[sw.setting], resolve=True)).items()
                if k2 != "depths"}
        key = str(sw.get("key", "scale"))     # scale (raw lambda) or shift (calibrated: fraction of sigma_k)
        for scale in scales:
            imgs, shift, skipped = _translate(sampler, src_x, src_y, int(sw.depth), q, guide,
                                              {**base, key: float(scale)}, arrangement, int(cfg.seed), dev)
            result["lambda_sweep"][str(scale)] = {
                "setting": sw.setting, "depth": int(sw.depth), "key": key, "scale": float(scale),
                **consistency(imgs, src_y),
                "domain_score": domain_score(clf, imgs), "shift_over_sigma_mean": shift, "skipped_steps": skipped}
            bar.update()
    bar.close()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "translation_quality.json", json.dumps(result, indent=2))
    _pictures(result, examples, src_x, src_y, k, q, out)
    return result


def _pictures(result, examples, src_x, src_y, k, q, out: Path) -> None:
    depths = result["depths"]
    for metric, label in (("consistency", "label consistency (judge fg mIoU %)"),
                          ("domain_score", "domain score (mean P(target))")):
        series = {}
        for name, s in result["settings"].items():
            by_depth = {r["depth"]: r[metric] for r in s["rows"]}
            series[name] = [by_depth.get(d, float("nan")) for d in depths]
        save_curve(out / f"quality_{metric}.png", depths, series, "translation depth n", label)
    sw = result["lambda_sweep"]
    if sw:
        scales = [v["scale"] for v in sw.values()]
        save_curve(out / "quality_lambda.png", scales,
                   {"consistency / 100": [v["consistency"] / 100 for v in sw.values()],
                    "domain score": [v["domain_score"] for v in sw.values()]},
                   f"guidance.{q.lambda_sweep.get('key', 'scale')}", "score",
                   title=f"{q.lambda_sweep.setting} at n={q.lambda_sweep.depth}")
    cols = sorted(examples, key=lambda nd: (nd[1], list(result["settings"]).index(nd[0])))
    rows = []
    for i in range(min(q.grid_images, len(src_x))):
        src = to_uint8(src_x[i])
        row = [src] + [to_uint8(examples[c][i]) for c in cols]
        row.append(overlay(src * 0, src_y[i].numpy(), k, alpha=1.0))
        rows.append(row)
    if rows:
        save_png(out / "quality_examples.png",
                 grid(rows, titles=["source"] + [f"{n} n={d}" for n, d in cols] + ["label"],
                      scale=max(1, 96 // rows[0][0].shape[0])))


# --------------------------------------------------------------------------- stage=quality
def _guidance_label(g: dict) -> str:
    strength = f"shift={g.get('shift')}" if g.get("calibrate") else f"lambda={g.get('scale', 0)}"
    extra = [f"{k}={g[k]}" for k in ("lcg_input", "loss_on") if k in g]
    if g.get("through_denoiser"):
        extra.append("through denoiser")
    return ", ".join([strength, *extra])


def quality_stage(cfg: DictConfig) -> dict:
    """The translation-quality job (``conf/stage/quality.yaml``): :func:`measure` in the run dir."""
    for key in ("quality.judge_ckpt", "diffusion_ckpt", "guide_ckpt"):
        if not OmegaConf.select(cfg, key):
            raise ConfigError(f"stage=quality needs {key}=PATH (the pipeline fills it from its jobs)")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    q = measure(cfg, cfg.quality.judge_ckpt, cfg.diffusion_ckpt, cfg.guide_ckpt, out)
    return {"markdown": quality_markdown(q), "quality": str(out / "translation_quality.json")}


def quality_markdown(q: dict) -> str:
    """Consistency / domain score / high-frequency tables of :func:`measure`'s result."""
    ref = q["reference"]

    def hf(r):
        return "" if r.get("hf") is None else f", hf {r['hf']:.3f}"

    lines = [f"## Translation quality ({q['num_images']} source val images, {q['num_steps']} reverse steps "
             "unless a row says otherwise)", "",
             "Consistency: the judge's foreground mIoU on the translated images against the source labels "
             "(all-class mIoU in brackets); hf: mean |difference| of neighbouring pixels (noise left by the "
             "chain raises it). Reference: "
             + "; ".join(f"{name} {r['consistency']:.1f} ({r.get('consistency_all', float('nan')):.1f}), domain "
                         f"score {r['domain_score']:.2f}{hf(r)}" for name, r in ref.items()) + ".", "",
             "| setting | n | steps | Sigma | consistency (mIoU %) | domain score | hf | shift / sigma |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for name, s in q["settings"].items():
        for r in s["rows"]:
            h = "" if r.get("hf") is None else f"{r['hf']:.3f}"
            lines.append(f"| {name} ({_guidance_label(s['guidance'])}) | {r['depth']} | "
                         f"{r.get('num_steps', q['num_steps'])} | {r.get('variance', 'beta')} | "
                         f"{r['consistency']:.1f} | {r['domain_score']:.2f} | {h} | {r['shift_over_sigma_mean']:.3f} |")
    if q.get("lambda_sweep"):
        lines += ["", "| lambda sweep | n | consistency | domain score | shift / sigma |", "|---|---:|---:|---:|---:|"]
        for v in q["lambda_sweep"].values():
            lines.append(f"| {v['setting']} {v.get('key', 'lambda')}={v['scale']} | {v['depth']} | "
                         f"{v['consistency']:.1f} | "
                         f"{v['domain_score']:.2f} | {v['shift_over_sigma_mean']:.3f} |")
    return "\n".join(lines) + "\n"
