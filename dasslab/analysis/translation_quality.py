"""Label consistency and domain score of translated images (DESIGN §6).

Where target labels exist (the digits benchmark, or any dataset with an oracle),
translation itself can be measured:

* **label consistency** — mIoU (%) of the *target oracle* on translated images
  scored against the *source* labels: does each pixel still show its class?
* **domain score** — the fraction of translated images that a small
  source-vs-target classifier (trained here on real source and real target
  images) calls *target*: how target-like are they?

Baseline phi^n trades one for the other as n grows; SGG should keep consistency
while the images still move to the target. :func:`measure` evaluates a grid of
depths x guidance settings (all from the same noise, so differences come from the
guidance alone) and a lambda sweep, writes ``translation_quality.json`` and
pictures (curves over n, a grid of examples).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from dasslab.metrics import SegmentationMetrics
from dasslab.utils.io import atomic_write_text
from dasslab.visualize import grid, overlay, save_curve, save_png, to_uint8

log = logging.getLogger(__name__)


class DomainClassifier(nn.Module):
    """A small CNN: image in [-1, 1] -> logit of 'target domain'."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


def _stack(ds, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ds) if limit is None else min(limit, len(ds))
    items = [ds[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def train_domain_classifier(source: torch.Tensor, target: torch.Tensor, steps: int = 300, batch_size: int = 64,
                            seed: int = 0, device: str | torch.device = "cpu") -> DomainClassifier:
    """Fit source (0) vs target (1) on real images; returns the classifier in eval mode."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = DomainClassifier().to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    half = batch_size // 2
    for _ in range(steps):
        i = torch.randint(len(source), (half,), generator=g)
        j = torch.randint(len(target), (half,), generator=g)
        x = torch.cat([source[i], target[j]]).to(device)
        y = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
        loss = F.binary_cross_entropy_with_logits(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()


@torch.no_grad()
def domain_score(clf: nn.Module, images: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``images`` classified as target."""
    dev = next(clf.parameters()).device
    calls = [clf(images[i:i + batch_size].to(dev)) > 0 for i in range(0, len(images), batch_size)]
    return float(torch.cat(calls).float().mean())


@torch.no_grad()
def label_consistency(oracle: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      batch_size: int = 256) -> float:
    """mIoU (%) of the target oracle on ``images`` against ``labels`` (the source labels)."""
    dev = next(oracle.parameters()).device
    metric = SegmentationMetrics(num_classes).to(dev)
    for i in range(0, len(images), batch_size):
        metric.update(oracle(images[i:i + batch_size].to(dev)), labels[i:i + batch_size].to(dev))
    return metric.summary()["miou"]


def _translate_all(sampler, images, labels, depth, num_steps, guide, guidance_cfg, arrangement_cfg, batch_size,
                   seed) -> tuple[torch.Tensor, list[float]]:
    """phi^depth of every image (same noise for every guidance setting); returns images and shift/sigma."""
    from dasslab.guidance import make_guidance

    dev = next(guide.parameters()).device if guide is not None else images.device
    outs, shifts = [], []
    for ci, start in enumerate(range(0, len(images), batch_size)):
        x = images[start:start + batch_size].to(dev)
        y = labels[start:start + batch_size].to(dev)
        fn = None
        if guidance_cfg is not None and guide is not None:
            fn = make_guidance(guide.normalize, guide.forward_normalized, y, guidance_cfg, arrangement_cfg)
        gen = torch.Generator(device=dev).manual_seed(seed * 100_003 + depth * 101 + ci)
        outs.append(sampler.translate(x, depth, num_steps, guidance=fn, generator=gen).cpu())
        shifts += [s["shift_over_sigma"] for s in sampler.stats if s["shift_rms"] > 0]
    return torch.cat(outs), shifts


def measure(cfg: DictConfig, oracle_ckpt: str, diffusion_ckpt: str, guide_ckpt: str, out_dir: str | Path) -> dict:
    """Consistency and domain score over ``quality.depths`` x ``quality.settings`` + a lambda sweep."""
    from dasslab.data.datamodule import build_dataset
    from dasslab.checkpoints import load_diffusion
    from dasslab.checkpoints import load_segmenter

    q = cfg.quality
    out = Path(out_dir)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    src_x, src_y = _stack(build_dataset(cfg.dataset, q.source_split, train=False, limit=q.num_images,
                                                 resize_labels=True))
    tgt_x, _ = _stack(build_dataset(cfg.dataset, "target", train=False, limit=max(q.num_images, 500)))
    src_train_x, _ = _stack(build_dataset(cfg.dataset, "source", train=False, limit=max(q.num_images, 500)))
    val_x, val_y = _stack(build_dataset(cfg.dataset, "target_val", train=False, limit=q.num_images,
                                         resize_labels=True))
    if src_x.shape[-2:] != src_y.shape[-2:]:
        raise ValueError("quality: labels must have the working image size (dataset.image_size)")
    oracle = load_segmenter(oracle_ckpt).model.to(dev).eval()
    guide = load_segmenter(guide_ckpt).model.to(dev).eval().requires_grad_(False)
    k = oracle.num_classes
    clf = train_domain_classifier(src_train_x, tgt_x, steps=q.classifier_steps, seed=cfg.seed, device=dev)
    sampler = load_diffusion(diffusion_ckpt).to(dev).sampler()
    arrangement = OmegaConf.to_container(cfg.arrangement, resolve=True)
    result = {
        "reference": {"source": {"consistency": label_consistency(oracle, src_x, src_y, k),
                                 "domain_score": domain_score(clf, src_x)},
                      "target_val": {"consistency": label_consistency(oracle, val_x, val_y, k),
                                     "domain_score": domain_score(clf, val_x)}},
        "depths": list(q.depths), "num_steps": q.num_steps, "num_images": len(src_x), "settings": {},
        "lambda_sweep": {},
    }
    settings = {name: OmegaConf.to_container(s, resolve=True) for name, s in q.settings.items()}
    examples = {}
    total = len(settings) * len(q.depths) + len(q.lambda_sweep.scales)
    bar = tqdm(total=total, desc="translation quality", dynamic_ncols=True)
    for name, gcfg in settings.items():
        rows = []
        for depth in q.depths:
            imgs, shifts = _translate_all(sampler, src_x, src_y, int(depth), q.num_steps, guide,
                                          None if gcfg.get("scale", 0) == 0 else gcfg, arrangement,
                                          q.batch_size, cfg.seed)
            rows.append({"depth": int(depth), "consistency": label_consistency(oracle, imgs, src_y, k),
                         "domain_score": domain_score(clf, imgs),
                         "shift_over_sigma_mean": sum(shifts) / len(shifts) if shifts else 0.0})
            examples[(name, int(depth))] = imgs[: q.grid_images]
            bar.update()
        result["settings"][name] = {"guidance": gcfg, "rows": rows}
    sw = q.lambda_sweep
    base = settings[sw.setting]
    for scale in sw.scales:
        imgs, shifts = _translate_all(sampler, src_x, src_y, int(sw.depth), q.num_steps, guide,
                                      {**base, "scale": float(scale)}, arrangement, q.batch_size, cfg.seed)
        result["lambda_sweep"][str(scale)] = {
            "setting": sw.setting, "depth": int(sw.depth), "scale": float(scale),
            "consistency": label_consistency(oracle, imgs, src_y, k), "domain_score": domain_score(clf, imgs),
            "shift_over_sigma_mean": sum(shifts) / len(shifts) if shifts else 0.0}
        bar.update()
    bar.close()
    atomic_write_text(out / "translation_quality.json", json.dumps(result, indent=2))
    _pictures(result, examples, src_x, src_y, k, q, out)
    return result


def _pictures(result, examples, src_x, src_y, k, q, out: Path) -> None:
    depths = result["depths"]
    for metric, label in (("consistency", "label consistency (oracle mIoU %)"),
                          ("domain_score", "domain score (fraction called target)")):
        series = {name: [r[metric] for r in s["rows"]] for name, s in result["settings"].items()}
        save_curve(out / f"quality_{metric}.png", depths, series, "translation depth n", label)
    sw = result["lambda_sweep"]
    if sw:
        scales = [v["scale"] for v in sw.values()]
        save_curve(out / "quality_lambda.png", scales,
                   {"consistency / 100": [v["consistency"] / 100 for v in sw.values()],
                    "domain score": [v["domain_score"] for v in sw.values()]},
                   "lambda (guidance.scale)", "score", title=f"{q.lambda_sweep.setting} at n={q.lambda_sweep.depth}")
    names = list(result["settings"])
    depth = depths[len(depths) // 2]
    rows = []
    for i in range(min(q.grid_images, len(src_x))):
        src = to_uint8(src_x[i])
        row = [src] + [to_uint8(examples[(n, depth)][i]) for n in names]
        row.append(overlay(src * 0, src_y[i].numpy(), k, alpha=1.0))
        rows.append(row)
    if rows:
        save_png(out / "quality_examples.png",
                 grid(rows, titles=["source"] + [f"{n} n={depth}" for n in names] + ["label"],
                      scale=max(1, 96 // rows[0][0].shape[0])))
