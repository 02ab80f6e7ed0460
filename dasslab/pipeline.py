"""``stage=pipeline``: run the rows of a results table, reusing finished stage runs.

Each stage run lives in ``paths.cache_dir/<stage>/<key>`` where ``key`` hashes the
settings that determine its result (dataset, model, optimisation, seed, …). A run
whose ``DONE.json`` exists is reused, so the source model and the diffusion model
are trained once for every row and experiment that shares them.

Rows: ``source_only`` (train on source), ``oracle`` (train on labeled target, where
the dataset has target labels), ``baseline`` (Table 2 (a): phi^N translation, then
fine-tune the source model on translated + source).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasslab.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def _resolved(cfg: DictConfig, keys: list[str]) -> dict:
    out = {}
    for key in keys:
        node = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    return out


def stage_key(cfg: DictConfig, keys: list[str]) -> str:
    """A short hash of the settings ``keys`` (resolved) that determine a stage's result."""
    blob = json.dumps(_resolved(cfg, keys), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


SEGMENTER_KEYS = ["dataset", "backbone", "segmenter", "augment", "seed", "diffusion.num_timesteps",
                  "diffusion.beta_start", "diffusion.beta_end", "trainer.precision"]
DIFFUSION_KEYS = ["dataset", "diffusion", "seed", "trainer.precision"]
ADAPT_KEYS = SEGMENTER_KEYS + DIFFUSION_KEYS + ["translate.num_steps", "translate.limit", "ptl.N", "adapt",
                                                   "guidance", "arrangement"]


def cached(cfg: DictConfig, name: str, keys: list[str], fn: Callable[[DictConfig], dict]) -> dict:
    """Run ``fn`` on a copy of ``cfg`` whose output dir is the cache folder of (name, key), or reuse it."""
    key = stage_key(cfg, keys)
    out = Path(cfg.paths.cache_dir) / name / key
    done = out / "DONE.json"
    if cfg.pipeline.reuse and done.is_file():
        result = json.loads(done.read_text())
        log.info("reusing %s run %s", name, out)
        print(f"[pipeline] {name}: reusing {out}")
        return result
    print(f"[pipeline] {name}: running in {out}")
    sub = OmegaConf.merge(cfg, {"paths": {"output_dir": str(out)}, "task_name": name})
    result = dict(fn(sub) or {})
    result["run_dir"] = str(out)
    atomic_write_text(done, json.dumps(result, indent=2, default=str))
    return result


def run_pipeline(cfg: DictConfig) -> dict:
    from dasslab.stages import adapt_baseline, train_diffusion, train_segmenter

    rows = list(cfg.pipeline.rows)
    results: dict[str, dict] = {}

    def source(c):
        r = train_segmenter(c, "source")
        return {"miou": r["miou"], "record": r, "checkpoint": r["checkpoint"]}

    src = None
    if any(r in rows for r in ("source_only", "baseline", "translation_quality")):
        src = cached(cfg, "source", SEGMENTER_KEYS, source)
    if "source_only" in rows:
        results["source_only"] = src
    if "oracle" in rows:
        if cfg.dataset.get("target_train_labeled") is None:
            print("[pipeline] oracle: skipped (dataset.target_train_labeled is not set)")
        else:
            results["oracle"] = cached(cfg, "oracle", SEGMENTER_KEYS, lambda c: _seg(train_segmenter(c, "oracle")))
    diff = None
    if "baseline" in rows or "translation_quality" in rows:
        diff = cached(cfg, "diffusion", DIFFUSION_KEYS, lambda c: {"checkpoint": str(train_diffusion(c))})
    if "baseline" in rows:
        results["baseline"] = cached(
            cfg, "adapt_baseline", ADAPT_KEYS,
            lambda c: _seg(adapt_baseline(c, source_ckpt=src["checkpoint"], diffusion_ckpt=diff["checkpoint"])))
    out = Path(cfg.paths.output_dir)
    quality = None
    if "translation_quality" in rows:
        if "oracle" not in results:
            raise ValueError("pipeline row translation_quality needs the oracle row (target labels)")
        from dasslab.analysis.translation_quality import measure

        quality = measure(cfg, results["oracle"]["checkpoint"], diff["checkpoint"], src["checkpoint"], out)
    summary = summarize(results)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    md = results_markdown(summary, cfg.dataset.name) + (quality_markdown(quality) if quality else "")
    atomic_write_text(out / "results.md", md)
    print(md)
    print(f"run directory: {out}")
    return summary


def _seg(record: dict) -> dict:
    return {"miou": record["miou"], "record": record, "checkpoint": record.get("checkpoint")}


def summarize(results: dict[str, dict]) -> dict:
    """``{row: {miou, run_dir, [subsets], [gap_closed]}}`` with IoU in percent."""
    out = {}
    for row, r in results.items():
        rec = r.get("record", {})
        entry = {"miou": r.get("miou"), "run_dir": r.get("run_dir")}
        for name, sub in rec.get("subsets", {}).items():
            entry[name] = sub.get("miou")
        out[row] = entry
    so, orc = out.get("source_only", {}).get("miou"), out.get("oracle", {}).get("miou")
    if so is not None and orc is not None and not math.isclose(orc, so):
        for row, entry in out.items():
            if row not in ("source_only", "oracle") and entry.get("miou") is not None:
                entry["gap_closed"] = round((entry["miou"] - so) / (orc - so), 4)
    return out


def results_markdown(summary: dict, dataset: str) -> str:
    lines = [f"# Results on {dataset} (target val, mIoU %)", "", "| row | mIoU | gap closed |", "|---|---:|---:|"]
    for row, e in summary.items():
        m = "n/a" if e.get("miou") is None else f"{e['miou']:.2f}"
        g = "" if e.get("gap_closed") is None else f"{100 * e['gap_closed']:.1f} %"
        lines.append(f"| {row} | {m} | {g} |")
    return "\n".join(lines) + "\n"


def quality_markdown(q: dict) -> str:
    """Consistency / domain score tables of :func:`dasslab.analysis.translation_quality.measure`."""
    ref = q["reference"]
    lines = ["", f"## Translation quality ({q['num_images']} source val images, {q['num_steps']} reverse steps)", "",
             f"Reference: source images consistency {ref['source']['consistency']:.1f}, domain score "
             f"{ref['source']['domain_score']:.2f}; real target val consistency "
             f"{ref['target_val']['consistency']:.1f}, domain score {ref['target_val']['domain_score']:.2f}.", "",
             "| setting | n | consistency (mIoU %) | domain score | shift / sigma |", "|---|---:|---:|---:|---:|"]
    for name, s in q["settings"].items():
        for r in s["rows"]:
            lines.append(f"| {name} (lambda={s['guidance'].get('scale', 0)}) | {r['depth']} | "
                         f"{r['consistency']:.1f} | {r['domain_score']:.2f} | {r['shift_over_sigma_mean']:.3f} |")
    if q["lambda_sweep"]:
        lines += ["", "| lambda sweep | n | consistency | domain score | shift / sigma |", "|---|---:|---:|---:|---:|"]
        for v in q["lambda_sweep"].values():
            lines.append(f"| {v['setting']} lambda={v['scale']} | {v['depth']} | {v['consistency']:.1f} | "
                         f"{v['domain_score']:.2f} | {v['shift_over_sigma_mean']:.3f} |")
    return "\n".join(lines) + "\n"
