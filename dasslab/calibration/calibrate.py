"""The calibration of one pair: the walk's deepest depth, then each depth's variance and guidance shift.

:func:`calibrate` runs the choices of :mod:`dasslab.calibration.choose` on the measurements of a
:class:`~dasslab.calibration.measure.Probe`, for the settings left at ``auto`` (a setting given explicitly is
used as given and recorded so):

1. ``ptl.t_max``: unguided chains at ``calibrate.probe_depths``, each with the variance that matches the
   target's high-frequency energy; t_max = the smallest depth whose domain score is within ``plateau`` of
   the highest (:func:`~dasslab.calibration.choose.choose_t_max`).
2. For each domain depth t_n (at most ``calibrate.max_depths`` of them, evenly over n; the others take the
   nearest): the unguided chain's variance (:func:`~dasslab.calibration.choose.bisect`), the guidance shift
   measured at that variance (:func:`~dasslab.calibration.choose.choose_shift`), then the guided chain's
   variance at that shift (guidance changes the high-frequency energy; the pools are guided).

:func:`run_calibration` loads what it reads -- source-train images and labels, unlabeled target-train
images (the dataset's ``target`` entry, which loads no labels), the guide and the DDPM -- and writes
``calibration.json`` and ``calibration.png``; :func:`calibrate_stage` is the pipeline's ``calibrate`` job.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dasslab.calibration.choose import bisect, choose_shift, choose_t_max, shift_feasible, within
from dasslab.calibration.measure import Probe
from dasslab.calibration.plan import AUTO, TranslationSettings, calibration_depths
from dasslab.errors import ConfigError
from dasslab.utils.io import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["calibrate", "calibrate_stage", "calibration_markdown", "calibration_summary", "run_calibration"]


def _say(msg: str) -> None:
    print(f"[calibrate] {msg}", flush=True)


def calibrate(probe: Probe, settings: TranslationSettings, cal: DictConfig | dict,
              depths: list[int] | None = None) -> dict:
    """The choices for ``settings`` (what is ``auto`` among t_max, variance, shift) from ``probe``'s measurements,
    at the domain depths of the walk -- or at ``depths`` (an export's), where t_max is not chosen."""
    tol, steps = float(cal["hf_tolerance"]), int(cal["bisection_steps"])
    t0 = time.perf_counter()

    def unguided(depth: int) -> tuple[float | str, list]:
        if settings.variance != AUTO:
            return settings.variance, []
        v, tried = bisect(lambda v: probe(depth, v)["hf_ratio"], steps, tol)
        return v, tried

    result: dict = {"given": settings.given(), "t_max": {}, "depths": []}
    t_max = settings.t_max
    if t_max == AUTO and depths is None:
        rows = []
        for depth in cal["probe_depths"]:
            v, _ = unguided(int(depth))
            rows.append({"depth": int(depth), "variance": v, **probe(int(depth), v)})
            _say(f"probe depth {depth}: domain score {rows[-1]['domain']:.3f}, hf x{rows[-1]['hf_ratio']:.2f} "
                 f"(variance {v if isinstance(v, str) else round(v, 3)})")
        t_max = choose_t_max(rows, float(cal["plateau"]))
        result["t_max"] = {"value": t_max, "chosen": True, "plateau": float(cal["plateau"]), "probe": rows}
        _say(f"ptl.t_max = {t_max} (the smallest probed depth within {cal['plateau']} of the highest domain score, "
             f"{max(r['domain'] for r in rows):.3f})")
    else:
        result["t_max"] = {"value": t_max, "chosen": False}
    walk = (list(enumerate(sorted(int(d) for d in depths), 1)) if depths is not None
            else calibration_depths(settings.N, t_max, settings.T, int(cal["max_depths"])))
    for n, depth in walk:
        v0, tried0 = unguided(depth)
        row0 = probe(depth, v0)
        entry = {"n": n, "depth": depth, "variance_unguided": v0, "unguided": row0,
                 "unguided_variance_search": tried0}
        v, shift, feasible, grid, tried = v0, None, None, [], []
        if settings.guided:
            if settings.shift == AUTO:
                grid, shift, feasible = _shift_search(probe, depth, v0, row0, settings, cal)
            else:
                shift = float(settings.shift)
            if settings.variance == AUTO:
                seen = [(v0, probe(depth, v0, shift)["hf_ratio"])] if not isinstance(v0, str) else []
                v, tried = bisect(partial(_hf_ratio, probe, depth, shift=shift), steps, tol, seen)
        final = probe(depth, v, shift)
        entry.update(variance=v, shift=shift, shift_feasible=feasible, shifts=grid, guided_variance_search=tried,
                     hf_ratio=final["hf_ratio"], domain=final["domain"], agreement=final["agreement"],
                     hf_within=within(final["hf_ratio"], tol))
        result["depths"].append(entry)
        vtxt = v if isinstance(v, str) else round(v, 3)
        stxt = "" if shift is None else f", shift {shift:g}" + ("" if feasible in (None, True) else " (none feasible)")
        _say(f"n={n} depth {depth}: variance {vtxt}{stxt} -> hf x{final['hf_ratio']:.2f}"
             f"{'' if entry['hf_within'] else ' (outside ±' + format(tol, 'g') + ')'}, domain score "
             f"{final['domain']:.3f}" + ("" if final["agreement"] is None else f", guide agreement "
                                          f"{final['agreement']:.1f} (unguided {row0['agreement']:.1f})"))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["translations"] = len(probe.measured)
    return result


def _hf_ratio(probe: Probe, depth: int, variance, shift: float | None = None) -> float:
    return probe(depth, variance, shift)["hf_ratio"]


def _shift_search(probe: Probe, depth: int, v0, row0: dict, settings: TranslationSettings, cal) -> tuple:
    """The shifts of ``calibrate.shifts`` measured at the unguided chain's variance ``v0``, weakest first, while
    feasible (:func:`~dasslab.calibration.choose.shift_feasible`); returns ``(grid, shift, feasible)``."""
    tol, drop = float(cal["hf_tolerance"]), float(cal["domain_drop"])
    smooth = 0.0 if settings.variance == AUTO else settings.variance     # the smoothest chain allowed

    def hf_smooth(row: dict, shift: float | None = None) -> float:
        """The hf ratio at the smoothest variance, measured only where it decides: hf rises with the
        variance, so a ratio within the tolerance at v0 is within it at the smoothest one."""
        if v0 == smooth or row["hf_ratio"] <= 1 + tol:
            return row["hf_ratio"]
        return _hf_ratio(probe, depth, smooth, shift)

    ref = {**row0, "hf_smooth": hf_smooth(row0)}
    grid = []
    for s in sorted(float(s) for s in cal["shifts"]):        # stronger pushes only while feasible
        row = probe(depth, v0, s)
        grid.append({"shift": s, **row, "hf_smooth": hf_smooth(row, s)})
        if not shift_feasible(grid[-1], ref, tol, drop):
            break
    return (grid, *choose_shift(grid, ref, tol, drop, float(cal["agreement_fraction"])))


def _stack(ds, limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = min(int(limit), len(ds))
    items = [ds[i] for i in range(n)]
    labels = [it.get("label") for it in items]
    y = torch.stack(labels) if labels and all(isinstance(v, torch.Tensor) for v in labels) else None
    return torch.stack([it["image"] for it in items]), y


def run_calibration(dataset: DictConfig, cal: DictConfig, settings: TranslationSettings, guidance, arrangement,
                    guide_ckpt: str | None, diffusion_ckpt: str, seed: int, out_dir: str | Path,
                    batch_size: int | None = None, depths: list[int] | None = None) -> dict:
    """Measure and choose (:func:`calibrate`) for one pair; write ``calibration.json`` and ``calibration.png``
    into ``out_dir``. Reads the ``source`` entry (images and labels) and the ``target`` entry (images only).
    ``guide_ckpt`` may be None for an unguided chain (no agreement is measured); ``depths``: an export's."""
    from dasslab.analysis.domain_score import domain_score, train_domain_classifier
    from dasslab.analysis.image_stats import high_frequency_energy
    from dasslab.analysis.judge import foreground_classes
    from dasslab.checkpoints import load_diffusion, load_segmenter
    from dasslab.data.datamodule import build_dataset

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_clf = int(cal["classifier_images"])
    src_x, src_y = _stack(build_dataset(dataset, "source", train=False, resize_labels=True), max(n_clf, cal["images"]))
    tgt_x, _ = _stack(build_dataset(dataset, "target", train=False, resize_labels=True),
                      max(n_clf, int(cal["reference_images"])))
    if src_y is None:
        raise ConfigError("calibrate: dataset.source has no labels; the calibration measures the guide's agreement "
                          "with the source labels")
    images, labels = src_x[: int(cal["images"])], src_y[: int(cal["images"])]
    guide_module = load_segmenter(guide_ckpt, setting="guide_ckpt") if guide_ckpt else None
    guide = guide_module.model.to(dev).eval().requires_grad_(False) if guide_module is not None else None
    diffusion = load_diffusion(diffusion_ckpt, setting="diffusion_ckpt").to(dev)
    schedule = diffusion.schedule.cpu()
    deepest = max([int(d) for d in cal["probe_depths"]] if settings.t_max == AUTO else
                  [settings.deepest()])
    clf = train_domain_classifier(src_x[:n_clf], tgt_x[:n_clf], schedule.q_sample, t_max=max(deepest, 1),
                                  steps=int(cal["classifier_steps"]), seed=int(seed), device=dev)
    hf_target = high_frequency_energy(tgt_x[: int(cal["reference_images"])])
    g = OmegaConf.to_container(guidance, resolve=True) if isinstance(guidance, DictConfig) else dict(guidance or {})
    a = OmegaConf.to_container(arrangement, resolve=True) if isinstance(arrangement, DictConfig) else arrangement
    names = guide_module.class_names if guide_module is not None else []
    probe = Probe(diffusion.sampler(), guide, images, labels, hf_target, clf, len(names),
                  foreground_classes(names, ["background"]), settings.num_steps, g, a,
                  int(batch_size or cal["batch_size"]), int(seed), dev)
    reference = {"hf_target": hf_target, "hf_source": high_frequency_energy(images),
                 "domain_source": domain_score(clf, images), "domain_target": domain_score(clf, tgt_x[:len(images)]),
                 "agreement_source": probe.score(images)["agreement"]}
    _say(f"{dataset.get('name')}: {len(images)} source images, target hf {hf_target:.4f} (source "
         f"{reference['hf_source']:.4f}); choosing {', '.join(settings.auto_keys()) or 'nothing (all given)'}")
    result = {"dataset": str(dataset.get("name")), "images": len(images), "num_steps": settings.num_steps,
              "N": settings.N, "reference": reference, "settings": OmegaConf.to_container(cal, resolve=True)
              if isinstance(cal, DictConfig) else dict(cal), **calibrate(probe, settings, cal, depths)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "calibration.json", json.dumps(result, indent=2))
    _picture(result, probe, out / "calibration.png", float(cal["hf_tolerance"]))
    _say(f"written {out / 'calibration.json'} ({result['translations']} translations of {len(images)} images, "
         f"{result['seconds']:.0f} s)")
    return result


def _picture(result: dict, probe: Probe, path: Path, tol: float) -> None:
    """Per depth: hf ratio (the +-tol band), domain score (the t_max probe too), guide agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dasslab.visualize import save_figure

    rows = result["depths"]
    d = [r["depth"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=110)
    ax = axes[0]
    ax.axhspan(1 - tol, 1 + tol, color="tab:green", alpha=0.15, label=f"target ±{tol:g}")
    ax.plot(d, [r["unguided"]["hf_ratio"] for r in rows], "o--", label="unguided")
    ax.plot(d, [r["hf_ratio"] for r in rows], "o-", label="chosen")
    ax.set_title("hf / target hf")
    ax = axes[1]
    probe_rows = result["t_max"].get("probe") or []
    if probe_rows:
        ax.plot([r["depth"] for r in probe_rows], [r["domain"] for r in probe_rows], "s:", color="grey",
                label="unguided probe")
    ax.plot(d, [r["unguided"]["domain"] for r in rows], "o--", label="unguided")
    ax.plot(d, [r["domain"] for r in rows], "o-", label="chosen")
    if result["t_max"].get("value"):
        ax.axvline(result["t_max"]["value"], color="k", lw=0.8, label=f"t_max {result['t_max']['value']}")
    ax.set_title("domain score")
    ax = axes[2]
    def value(v):
        return float("nan") if v is None else v

    ax.plot(d, [value(r["unguided"]["agreement"]) for r in rows], "o--", label="unguided")
    ax.plot(d, [value(r["agreement"]) for r in rows], "o-", label="chosen")
    for r in rows:
        if r.get("shift") is not None:
            ax.annotate(f"{r['shift']:g}", (r["depth"], r["agreement"]), fontsize=7, textcoords="offset points",
                        xytext=(0, 5))
    ax.set_title("guide agreement (mIoU %, shift)")
    for ax in axes:
        ax.set_xlabel("depth t_n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"calibration of {result['dataset']}")
    fig.tight_layout()
    save_figure(fig, path)


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def calibration_markdown(result: dict) -> str:
    """What the calibration chose, per depth (results.md)."""
    t = result["t_max"]
    given = result.get("given") or {}
    lines = [f"## Calibration ({result['dataset']}: {result['images']} source images, {result['num_steps']} reverse "
             f"steps, no target label read)", "",
             f"ptl.t_max = {t.get('value')} ({'chosen: domain score plateau' if t.get('chosen') else 'as given'})"
             + (f"; given: {', '.join(f'{k}={v}' for k, v in given.items())}" if given else ""), "",
             "| n | depth | variance | shift | hf / target | domain score | guide agreement (unguided) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["depths"]:
        v = r["variance"] if isinstance(r["variance"], str) else f"{r['variance']:.3f}"
        s = "" if r.get("shift") is None else f"{r['shift']:g}" + ("" if r.get("shift_feasible") in (None, True)
                                                                   else " (none feasible)")
        lines.append(f"| {r['n']} | {r['depth']} | {v} | {s} | {r['hf_ratio']:.2f}{'' if r['hf_within'] else ' !'} | "
                     f"{r['domain']:.3f} | {_pct(r['agreement'])} ({_pct(r['unguided']['agreement'])}) |")
    return "\n".join(lines) + "\n"


def calibrate_stage(cfg: DictConfig) -> dict:
    """The pipeline's ``calibrate`` job (``conf/stage/calibrate.yaml``): :func:`run_calibration` in the run dir."""
    for key in ("guide_ckpt", "diffusion_ckpt"):
        if not OmegaConf.select(cfg, key):
            raise ConfigError(f"stage=calibrate needs {key}=PATH (the pipeline fills it: the source model, the DDPM)")
    settings = TranslationSettings.of(cfg.ptl, cfg.translate, cfg.guidance, int(cfg.diffusion.num_timesteps))
    out = Path(cfg.paths.output_dir)
    result = run_calibration(cfg.dataset, cfg.calibrate, settings, cfg.guidance, cfg.arrangement, cfg.guide_ckpt,
                             cfg.diffusion_ckpt, int(cfg.seed), out)
    return {"markdown": calibration_markdown(result), "calibration": str(out / "calibration.json"),
            "summary": calibration_summary(result)}


def calibration_summary(result: dict) -> str:
    """One line: t_max, and each depth's variance / shift (what the pipeline prints when the job ends)."""
    def fmt(v):
        return v if isinstance(v, str) else f"{v:.2f}"

    depths = "; ".join(f"{r['depth']}: v {fmt(r['variance'])}"
                       + ("" if r.get("shift") is None else f" s {r['shift']:g}") + f" hf x{r['hf_ratio']:.2f}"
                       for r in result["depths"])
    return f"t_max {result['t_max'].get('value')} ({'chosen' if result['t_max'].get('chosen') else 'given'}); {depths}"
