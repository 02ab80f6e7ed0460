"""The results of a pipeline: ``results.json``/``results.md``/``timings.json`` from the jobs' records.

Seed statistics are computed here and nowhere else: :func:`mean_std` (mean and sample std over seeds),
:func:`summarize` (per row: mean ± std, gap closed, share of ceiling, paired gains, "beats <row>"), used
by the pipeline's results.md and by ``dasslab-tables`` (:mod:`dasslab.workflow.tables`) alike.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from omegaconf import DictConfig

from dasslab.errors import ConfigError
from dasslab.utils.io import atomic_write_text
from dasslab.workflow.plan import Job

MIN_GAP = 1.0   # mIoU points the oracle (the ceiling) must be above source only for "gap closed" ("share of
                # ceiling") to be reported


REFERENCES = ("ptl_none", "baseline", "self_training", "best")   # rows every other row is compared with run by
                                                                   # run (where the table has them): beats_<row>


def mean_std(values) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of ``values`` (None entries left out): (None, None)
    for no value, std None for one (no spread measured). Every mean ± std of results.md and dasslab-tables."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def reported(record: dict) -> dict:
    """A job's record with the numbers a table reports: those of the held-apart split (``report``: target_test,
    where the dataset has one) in place of the val split's, which stay as ``val_miou``."""
    report = record.get("report")
    if not isinstance(report, dict) or report.get("miou") is None:
        return record
    return {**record, "miou": report["miou"], "subsets": report.get("subsets") or {}, "split": report.get("split"),
            "val_miou": record.get("miou")}


def _by_seed(entry: dict) -> dict[str, float] | float | None:
    """A summarized row's mIoU: ``{seed: value}`` where it was run per seed, else its one value (or None)."""
    if "per_seed" in entry:
        return {s: e["miou"] for s, e in entry["per_seed"].items() if e.get("miou") is not None}
    return entry.get("miou")


def paired(entry: dict, ref: dict) -> list[tuple[str, float, float]]:
    """``(seed, value, reference value)``: the runs of a summarized row beside those of row ``ref`` — the same
    seed's where both were run per seed, the one run of a row run once (shared by every seed) otherwise."""
    a, b = _by_seed(entry), _by_seed(ref)
    if a is None or b is None:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        return [(s, a[s], b[s]) for s in a if s in b]
    if isinstance(a, dict):
        return [(s, v, b) for s, v in a.items()]
    if isinstance(b, dict):
        return [(s, a, v) for s, v in b.items()]
    return [("", a, b)]


def _share(out: dict, top: str, key: str, what: str) -> None:
    """``key`` = (row - source_only) / (top - source_only) for every other row, when ``top`` is MIN_GAP above."""
    so, hi = out.get("source_only", {}).get("miou"), out.get(top, {}).get("miou")
    if so is None or hi is None:
        return
    if hi - so < MIN_GAP:
        out[top]["note"] = (f"{top} {hi:.2f} is not {MIN_GAP:g} points above source only {so:.2f}: "
                            f"{what} is not reported")
        return
    for row, entry in out.items():
        if row not in ("source_only", top) and entry.get("miou") is not None:
            entry[key] = round((entry["miou"] - so) / (hi - so), 4)


def summarize(results: dict[str, dict], skipped: dict[str, str] | None = None) -> dict:
    """``{row: {miou, run_dir, [subsets], [comparisons]}}`` with IoU in percent; skipped rows say why.

    A row run with several seeds (``row@seedS`` results) reports the mean, ``std`` (sample standard
    deviation, null for one seed), ``seeds`` and each seed's value under ``per_seed``. Beside the rows
    ``source_only``, ``oracle``, ``ceiling`` (Eq. 12 on labelled target-train images), ``ptl_none`` and
    ``baseline``, where those have a value, every row gets:

    - ``gap_closed`` = (row - source_only) / (oracle - source_only), if the oracle is MIN_GAP above;
    - ``ceiling_share`` = (row - source_only) / (ceiling - source_only), if the ceiling is MIN_GAP above;
    - run per seed: ``paired_gain`` ({seed: row - that seed's source_only, or source_only's one run where
      all seeds share it}), ``paired_gain_mean``, ``wins`` (seeds with a gain > 0) of ``n_paired``;
    - ``beats_<ref>`` for each REFERENCES row the table has (ptl_none, baseline, self_training, best): "k/n",
      the paired runs (as above) where the row is higher.

    :func:`results_markdown` prints it; ``dasslab-tables`` computes its rows with it.
    """
    grouped: dict[str, dict[str, dict]] = {}
    for label, r in results.items():
        row, _, seed = label.partition("@seed")
        grouped.setdefault(row, {})[seed] = reported(r)
    out = {}
    for row, by_seed in grouped.items():
        entries = []
        for r in by_seed.values():
            entry = {"miou": r.get("miou"), "run_dir": r.get("run_dir")}
            for name, sub in (r.get("subsets") or {}).items():
                entry[name] = sub.get("miou") if isinstance(sub, dict) else sub
            for key in ("split", "val_miou", "distinct_images"):
                if r.get(key) is not None:
                    entry[key] = r[key]
            entries.append(entry)
        if len(entries) == 1 and "" in by_seed:
            out[row] = entries[0]
            continue
        mean, std = mean_std(e["miou"] for e in entries)
        out[row] = {"miou": mean, "std": std, "seeds": [int(s) for s in by_seed],
                    "per_seed": {s: e for s, e in zip(by_seed, entries)}}
        for key in ("split", "distinct_images"):
            if entries[0].get(key) is not None:
                out[row][key] = entries[0][key]
        if any(e.get("val_miou") is not None for e in entries):
            out[row]["val_miou"] = mean_std(e.get("val_miou") for e in entries)[0]
    for row, why in (skipped or {}).items():
        out[row] = {"miou": None, "skipped": why}
    _share(out, "oracle", "gap_closed", "gap closed")
    _share(out, "ceiling", "ceiling_share", "share of ceiling")
    if "source_only" in out:
        for row, entry in out.items():
            pairs = paired(entry, out["source_only"]) if row != "source_only" and "per_seed" in entry else []
            if pairs:
                gains = {s: round(v - ref, 4) for s, v, ref in pairs}
                entry.update(paired_gain=gains, paired_gain_mean=round(statistics.fmean(gains.values()), 4),
                             wins=sum(g > 0 for g in gains.values()), n_paired=len(gains))
    for ref in REFERENCES:
        if out.get(ref, {}).get("miou") is None:
            continue
        for row, entry in out.items():
            pairs = paired(entry, out[ref]) if row != ref else []
            if pairs:
                entry[f"beats_{ref}"] = f"{sum(v > r for _, v, r in pairs)}/{len(pairs)}"
    return out


def miou_cell(entry: dict, digits: int = 2) -> str:
    """``mean ± std (n seeds)`` of a summarized row (``n/a`` without a value)."""
    if entry.get("miou") is None:
        return "n/a"
    cell = f"{entry['miou']:.{digits}f}"
    if entry.get("seeds"):
        n = len(entry["seeds"])
        cell += ("" if entry.get("std") is None else f" ± {entry['std']:.{digits}f}") + f" ({n} seed{'s' * (n > 1)})"
    return cell


def comparison_cells(entry: dict) -> dict[str, str]:
    """The comparison columns of a summarized row (:func:`summarize`) as results.md and dasslab-tables print
    them: gap closed, share of ceiling, paired gain per seed, beats <reference row>."""
    def pct(v):
        return "" if v is None else f"{100 * v:.1f} %"

    gain = ""
    if entry.get("paired_gain"):
        gain = " / ".join(f"{g:+.2f}" for g in entry["paired_gain"].values())
        gain += f" (mean {entry['paired_gain_mean']:+.2f}, {entry['wins']}/{entry['n_paired']} > 0)"
    cells = {"gap closed": pct(entry.get("gap_closed")), "share of ceiling": pct(entry.get("ceiling_share")),
             "paired gain per seed": gain}
    for ref in REFERENCES:
        cells[f"beats {ref}"] = entry.get(f"beats_{ref}") or ""
    return cells


COMPARISON_NOTE = ("gap closed = (row − source only) / (oracle − source only); share of ceiling = (row − source "
                   "only) / (ceiling − source only), the ceiling being the adaptation with labelled target-train "
                   "images in place of translations; paired gain = row − source only of the same seed, seed by seed "
                   "(source only's one run where all seeds share it); beats X = runs above X's run of the same "
                   "seed.")


def comparison_columns(summary: dict) -> list[str]:
    """The comparison columns a table prints: the fixed ones, and ``beats baseline`` where some row has it."""
    cols = ["gap closed", "share of ceiling", "paired gain per seed", "beats ptl_none"]
    extra = [f"beats {r}" for r in REFERENCES if f"beats {r}" not in cols
             and any(f"beats_{r}" in e for e in summary.values())]
    return cols + extra


def reported_split(summary: dict) -> str:
    """The split a summary's numbers are on: target_test where every scored row has it, else target val."""
    splits = {e.get("split") or "target_val" for e in summary.values() if e.get("miou") is not None}
    return splits.pop().replace("_", " ") if len(splits) == 1 else "target val"


def distinct_cell(entry: dict) -> str:
    """``source + X^n`` distinct training images of a row (``distinct_images``), e.g. ``3000 + 768 translated``."""
    d = entry.get("distinct_images") or {}
    extra = [f"{v} {k.replace('target_train_labeled', 'target').replace('_', ' ')}" for k, v in d.items()
             if k != "source"]
    return " + ".join([str(d["source"])] + extra) if "source" in d else ""


def results_markdown(summary: dict, dataset: str) -> str:
    cols = comparison_columns(summary)
    distinct = any(e.get("distinct_images") for e in summary.values())
    lines = [f"# Results on {dataset} ({reported_split(summary)}, mIoU %)", "",
             "| row | mIoU (± std, seeds) | " + " | ".join(cols) + (" | distinct training images" if distinct else "")
             + " |", "|---|---:|" + "---:|" * len(cols) + ("---:|" if distinct else "")]
    for row, e in summary.items():
        cells = comparison_cells(e)
        if e.get("skipped"):
            cells = {"gap closed": f"skipped: {e['skipped']}"}
        lines.append(f"| {row} | {miou_cell(e)} | " + " | ".join(cells.get(c, "") for c in cols)
                     + (f" | {distinct_cell(e)}" if distinct else "") + " |")
    lines += ["", COMPARISON_NOTE]
    for top in ("oracle", "ceiling"):
        if summary.get(top, {}).get("note"):
            lines += ["", f"Note: {summary[top]['note']}."]
    return "\n".join(lines) + "\n"


def timings_markdown(timings: dict[str, dict]) -> str:
    """Each job's stage wall time (as recorded when it ran; reused jobs say so)."""
    lines = ["## Stage times (wall, as recorded when each job ran)", "", "| job | stage | seconds | |",
             "|---|---|---:|---|"]
    for name, t in timings.items():
        sec = "n/a" if t.get("seconds") is None else f"{t['seconds']:.0f}"
        lines.append(f"| {name} | {t['stage']} | {sec} | {'reused' if t.get('reused') else 'ran now'} |")
    known = [t["seconds"] for t in timings.values() if t.get("seconds") is not None]
    lines.append(f"| all | | {sum(known):.0f} | |")
    return "\n".join(lines) + "\n"


def _is_row(cfg: DictConfig, label: str) -> bool:
    """A result of ``pipeline.rows``: with seeds, a per-seed row is its seeded runs only (an unseeded run
    of it, planned because another job needs it, is not counted again)."""
    name, seeded, _ = label.partition("@seed")
    if name not in cfg.pipeline.rows:
        return False
    return bool(seeded) or not (cfg.pipeline.get("seeds") and cfg.pipeline.jobs[name].get("per_seed"))


def finished_records(planned: dict[str, Job]) -> dict[str, dict]:
    """Every planned job's ``DONE.json`` (what a job that ran elsewhere, e.g. on Slurm, recorded)."""
    done = {}
    for name, job in planned.items():
        record = job.out / "DONE.json"
        if not record.is_file():
            raise ConfigError(f"pipeline: job {name} has not finished (no {record}); expected every job of the "
                              f"plan done before the results are written")
        done[name] = {**json.loads(record.read_text()), "reused": True}
    return done


def write_results(cfg: DictConfig, planned: dict[str, Job], skipped: dict[str, str],
                  done: dict[str, dict] | None = None) -> dict:
    """``results.json``, ``results.md``, ``timings.json`` and the rows' pictures in ``paths.output_dir`` from the
    jobs' records (``done``; read from their ``DONE.json`` when None), and the experiment's W&B summary run
    where ``logger=wandb``. Returns the summary (:func:`summarize`)."""
    done = finished_records(planned) if done is None else done
    timings = {name: {"stage": job.stage, "seconds": done[name].get("seconds"),
                      "reused": bool(done[name].get("reused"))} for name, job in planned.items()}
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = {row: i for i, row in enumerate(cfg.pipeline.rows)}
    rows = {r: done[r] for r in sorted(done, key=lambda r: order.get(r.split("@seed")[0], 0)) if _is_row(cfg, r)}
    scored = {r: v for r, v in rows.items() if "markdown" not in v}     # rows with a target-val mIoU
    summary = summarize(scored, skipped)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=2))
    md = results_markdown(summary, cfg.dataset.name) + "\n" + timings_markdown(timings)
    for row, result in rows.items():
        run_dir = Path(result.get("run_dir", "/nonexistent"))
        if "markdown" in result:             # an analysis job (translation quality): its report and files
            md += "\n" + result["markdown"]
            for f in [*run_dir.glob("*.png"), *run_dir.glob("*.json")]:
                if f.name not in ("DONE.json", "run_info.json"):
                    shutil.copy2(f, out / f.name)
            continue
        for pic in run_dir.glob("*.png"):
            shutil.copy2(pic, out / f"{row}_{pic.name}")
    for name, job in planned.items():      # what each calibration chose (every row it served listed above)
        if job.stage == "calibrate" and "markdown" in done[name]:
            md += "\n" + done[name]["markdown"]
            tag = name.replace("calibrate", "calibration", 1).replace("~", "_").replace("@", "_")
            for f in ("calibration.json", "calibration.png"):
                if (job.out / f).is_file():
                    shutil.copy2(job.out / f, out / f"{tag}{Path(f).suffix}")
    atomic_write_text(out / "results.md", md)
    print(md)
    if cfg.get("logger") and cfg.logger.get("wandb") is not None:
        from dasslab.workflow.wandb_report import log_experiment

        log_experiment(cfg, summary, rows, timings, md)
    return summary
