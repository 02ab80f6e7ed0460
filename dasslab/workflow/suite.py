"""A suite of domain pairs (``pipeline.pairs``): every pair's plan run as one, one table with the pairs as columns.

Each pair is the experiment's config with the ``dataset`` section replaced by the pair's dataset file
(``conf/dataset/<pair>.yaml``, as written there) and its output in ``<output dir>/<pair>/`` (that pair's own
``results.json``/``results.md``/pictures, :func:`dasslab.workflow.results.write_results`). The jobs of all pairs
run in one ready loop (``pipeline.parallel`` slots kept busy across pairs). The suite's ``results.json`` is
``{"split", "pairs": {pair: {row: {"mean", "std", "seeds": [per-seed values], ...}}}, "regime", "calibration",
"mean_gap_closed"}``; ``results.md`` holds, before any method row, each pair's regime (unguided phi^{t_max} against
source only; the pools' judge consistency against real target images'), then the rows x pairs table, then what
the calibration chose per pair. Numbers are on the held-apart split (target_test) wherever the pairs have it.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasslab.errors import ConfigError
from dasslab.utils.io import atomic_write_text
from dasslab.workflow.execute import execute
from dasslab.workflow.plan import load_option, plan, plan_text
from dasslab.workflow.results import miou_cell, reported_split, write_results

__all__ = ["pair_config", "run_suite", "suite_markdown", "suite_summary"]


def pair_config(cfg: DictConfig, pair: str) -> DictConfig:
    """The experiment's config for one pair: its dataset file's ``dataset`` section (the composed one, overrides
    included, for the pair the run was composed with) with ``pipeline.pair_dataset`` merged in (values every
    pair takes, e.g. ``{generate: {size: 64}}``), output in ``<out>/<pair>``."""
    sub = copy.deepcopy(cfg)
    OmegaConf.set_struct(sub, False)
    if str(cfg.dataset.get("name")) != str(pair):
        option = load_option("dataset", str(pair))
        if option.get("dataset") is None:
            raise ConfigError(f"pipeline.pairs: dataset={pair} has no dataset section (conf/dataset/{pair}.yaml)")
        sub.dataset = option.dataset
    if cfg.pipeline.get("pair_dataset"):
        sub.dataset = OmegaConf.merge(sub.dataset, cfg.pipeline.pair_dataset)
    sub.pipeline.pairs = None
    sub.paths.output_dir = str(Path(str(cfg.paths.output_dir)) / str(pair))
    return sub


def run_suite(cfg: DictConfig) -> dict:
    """Plan every pair, run all their jobs in one loop, write each pair's results and the suite's."""
    pairs = [str(p) for p in cfg.pipeline.pairs]
    plans = {}
    for pair in pairs:
        pc = pair_config(cfg, pair)
        planned, skipped = plan(pc, list(pc.pipeline.rows))
        for row, why in skipped.items():
            print(f"[suite] {pair}/{row}: skipped ({why})")
        plans[pair] = (pc, planned, skipped)
    if cfg.pipeline.get("dry_run"):
        for pair, (_, planned, _) in plans.items():
            print(f"# {pair}\n{plan_text(planned)}")
        return {"plan": {p: list(planned) for p, (_, planned, _) in plans.items()}}
    from dasslab.workflow.slurm import hydra_slurm_params

    if hydra_slurm_params() is not None:
        raise ConfigError("pipeline.pairs (a suite) runs here; under hydra/launcher=slurm run one pair at a time "
                          "(dataset=<pair>, pipeline.pairs=null)")
    merged = {f"{pair}/{name}": replace(job, name=f"{pair}/{name}", needs=[f"{pair}/{u}" for u in job.needs])
              for pair, (_, planned, _) in plans.items() for name, job in planned.items()}
    done = execute(merged, bool(cfg.pipeline.reuse), int(cfg.pipeline.get("parallel") or 1))
    summaries, extras = {}, {}
    for pair, (pc, planned, skipped) in plans.items():
        mine = {name: done[f"{pair}/{name}"] for name in planned}
        summaries[pair] = write_results(pc, planned, skipped, mine)
        extras[pair] = _pair_extras(planned, mine)
    out = Path(str(cfg.paths.output_dir))
    result = suite_summary(summaries, extras)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    md = suite_markdown(result, list(cfg.pipeline.rows))
    atomic_write_text(out / "results.md", md)
    _picture(result, list(cfg.pipeline.rows), out / "suite_results.png")
    print(md)
    return result


def _pair_extras(planned: dict, done: dict) -> dict:
    """A pair's regime and calibration from its jobs' files: the calibration that `full` used, the pools' judge
    consistency over the domains of `full` and `baseline` (``ptl_curve.json``), the judge's on real target images."""
    extras: dict = {"calibration": {}, "pools": {}}
    for name, job in planned.items():
        if job.stage == "calibrate" and (job.out / "calibration.json").is_file():
            cal = json.loads((job.out / "calibration.json").read_text())
            extras["calibration"][name] = {
                "t_max": cal["t_max"].get("value"), "t_max_chosen": bool(cal["t_max"].get("chosen")),
                "hf_target": cal["reference"]["hf_target"],
                "depths": [{k: r.get(k) for k in ("n", "depth", "variance", "variance_unguided", "shift", "hf_ratio",
                                                  "hf_within", "domain", "agreement")} for r in cal["depths"]]}
        row = name.split("@seed")[0]
        curve = Path(str(done[name].get("run_dir", ""))) / "ptl_curve.json"
        if row in ("full", "baseline", "paper") and curve.is_file():
            pools = [e["pool"] for e in json.loads(curve.read_text()) if e.get("pool")]
            extras["pools"].setdefault(row, []).append(pools)
        if row == "judge" and done[name].get("miou") is not None:
            subsets = done[name].get("subsets") or {}
            fg = subsets.get("miou_fg", {}).get("miou") if isinstance(subsets.get("miou_fg"), dict) else None
            extras["judge_on_target"] = fg if fg is not None else done[name]["miou"]
    return extras


def _mean(values):
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def suite_summary(summaries: dict[str, dict], extras: dict[str, dict] | None = None) -> dict:
    """``{"split", "pairs": {pair: {row: {mean, std, seeds, ...}}}, "mean_gap_closed", "regime", "calibration"}``
    from each pair's :func:`~dasslab.workflow.results.summarize` (and its regime and calibration, ``extras``)."""
    extras = extras or {}
    pairs: dict = {}
    for pair, summary in summaries.items():
        rows = {}
        for row, e in summary.items():
            seeds = ([v.get("miou") for v in e["per_seed"].values()] if "per_seed" in e
                     else ([e["miou"]] if e.get("miou") is not None else []))
            rows[row] = {"mean": e.get("miou"), "std": e.get("std"), "seeds": seeds,
                         **{k: e[k] for k in ("val_miou", "gap_closed", "ceiling_share", "paired_gain",
                                              "paired_gain_mean", "wins", "n_paired", "beats_ptl_none",
                                              "beats_baseline", "distinct_images", "skipped", "note") if k in e}}
        pairs[pair] = rows
    rows = list(dict.fromkeys(r for p in pairs.values() for r in p))
    result = {"split": _split(summaries), "pairs": pairs,
              "mean_gap_closed": {r: _mean(pairs[p].get(r, {}).get("gap_closed") for p in pairs) for r in rows},
              "regime": {}, "calibration": {}}
    for pair, x in extras.items():
        rows_p = pairs.get(pair, {})
        base, src = rows_p.get("baseline", {}), rows_p.get("source_only", {})
        pools = {}
        for row, runs in (x.get("pools") or {}).items():
            last = [r[-1].get("consistency") for r in runs if r]
            deep = [p.get("consistency") for r in runs for p in r if p.get("domain_score", 0) >= 0.8]
            per_domain = [{"domain": i + 1,
                           "hf_ratio": _mean(r[i]["hf"] / r[i]["hf_target"] for r in runs
                                             if len(r) > i and r[i].get("hf_target")),
                           "domain_score": _mean(r[i].get("domain_score") for r in runs if len(r) > i),
                           "consistency": _mean(r[i].get("consistency") for r in runs if len(r) > i)}
                          for i in range(max(len(r) for r in runs))] if runs else []
            pools[row] = {"last_domain": _mean(last), "domain_score_ge_0.8": _mean(deep),
                          "last_domain_score": _mean([r[-1].get("domain_score") for r in runs if r]),
                          "per_domain": per_domain}
        result["regime"][pair] = {
            "baseline_minus_source_only": (None if base.get("mean") is None or src.get("mean") is None
                                           else base["mean"] - src["mean"]),
            "baseline_wins": base.get("wins"), "baseline_n": base.get("n_paired"),
            "judge_on_target": x.get("judge_on_target"), "pools": pools}
        result["calibration"][pair] = x.get("calibration") or {}
    return result


def _split(summaries: dict[str, dict]) -> str:
    splits = {reported_split(s) for s in summaries.values()}
    return splits.pop() if len(splits) == 1 else "mixed"


def _f(v, fmt="{:.1f}"):
    return "" if v is None else fmt.format(v)


def suite_markdown(result: dict, rows: list[str]) -> str:
    """The suite's report: regime per pair, then rows x pairs (mean ± std, gap closed, paired gain, wins), then the
    calibration's choices per pair."""
    pairs = list(result["pairs"])
    lines = [f"# Suite ({result['split']}, mIoU %)", "", "## Each pair's regime (before any method row)", "",
             "| pair | phi^t_max unguided − source only | seeds above source only | pools' judge consistency, "
             "last domain (full / baseline) | at domain score ≥ 0.8 (full) | judge on real target images |",
             "|---|---:|---:|---:|---:|---:|"]
    for pair in pairs:
        g = result["regime"].get(pair, {})
        pools = g.get("pools") or {}
        full, base = pools.get("full", {}), pools.get("baseline", {})
        wins = f"{g.get('baseline_wins')}/{g.get('baseline_n')}" if g.get("baseline_n") else ""
        lines.append(f"| {pair} | {_f(g.get('baseline_minus_source_only'), '{:+.2f}')} | {wins} | "
                     f"{_f(full.get('last_domain'))} / {_f(base.get('last_domain'))} | "
                     f"{_f(full.get('domain_score_ge_0.8'))} | {_f(g.get('judge_on_target'))} |")
    lines += ["", "## Rows x pairs", "",
              "Each cell: mean ± std over seeds; gap closed = (row − source only) / (oracle − source only); "
              "paired gain over source only, seeds with a gain; beats ptl_none / baseline: seeds where the row is "
              "above that row's run of the same seed.", "",
              "| row | " + " | ".join(pairs) + " | mean gap closed |", "|---|" + "---:|" * (len(pairs) + 1)]
    for row in rows:
        cells = []
        for pair in pairs:
            e = result["pairs"][pair].get(row)
            if not e:
                cells.append("")
                continue
            if e.get("skipped"):
                cells.append("skipped")
                continue
            cell = miou_cell({"miou": e["mean"], "std": e.get("std"), "seeds": e["seeds"] if len(e["seeds"]) > 1
                              else None})
            extra = []
            if e.get("gap_closed") is not None:
                extra.append(f"gap {100 * e['gap_closed']:.1f} %")
            if e.get("paired_gain_mean") is not None:
                extra.append(f"{e['paired_gain_mean']:+.2f}, {e['wins']}/{e['n_paired']}")
            beats = [f"> {r} {e[f'beats_{r}']}" for r in ("ptl_none", "baseline")
                     if e.get(f"beats_{r}") and len(e["seeds"]) > 1]
            cells.append(cell + (f" ({'; '.join(extra + beats)})" if extra or beats else ""))
        gap = result["mean_gap_closed"].get(row)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {_f(None if gap is None else 100 * gap)} |")
    lines += ["", "## Distinct training images per row (source + X^n)", "", "| row | " + " | ".join(pairs) + " |",
              "|---|" + "---:|" * len(pairs)]
    for row in rows:
        cells = []
        for pair in pairs:
            d = (result["pairs"][pair].get(row) or {}).get("distinct_images") or {}
            cells.append(" + ".join(str(v) for v in d.values()))
        if any(cells):
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "## What PTL trained on: the pools of `full`, domain by domain (mean over seeds)", "",
              "hf / target hf | domain score | judge consistency, per domain n = 1 … N", ""]
    for pair in pairs:
        per = ((result["regime"].get(pair) or {}).get("pools") or {}).get("full", {}).get("per_domain") or []
        if per:
            lines.append(f"- **{pair}**: " + "; ".join(
                f"n={d['domain']}: x{_f(d['hf_ratio'], '{:.2f}')} | {_f(d['domain_score'], '{:.2f}')} | "
                f"{_f(d['consistency'])}" for d in per))
    lines += ["", "## What the calibration chose (no target label read)", ""]
    for pair in pairs:
        for name, c in (result["calibration"].get(pair) or {}).items():
            lines.append(f"- **{pair}** ({name}): t_max {c['t_max']} ({'chosen' if c['t_max_chosen'] else 'given'}); "
                         + "; ".join(f"t={r['depth']}: v {_variance(r['variance'])}"
                                     + ("" if r.get("shift") is None else f", shift {r['shift']:g}")
                                     + f", hf x{r['hf_ratio']:.2f}" for r in c["depths"]))
    return "\n".join(lines) + "\n"


def _variance(v) -> str:
    return v if isinstance(v, str) else f"{v:.2f}"


def _picture(result: dict, rows: list[str], path: Path) -> None:
    """Rows x pairs: mean ± std bars per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dasslab.visualize import save_figure

    pairs = list(result["pairs"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.6), dpi=110, squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        names = [r for r in rows if (result["pairs"][pair].get(r) or {}).get("mean") is not None]
        means = [result["pairs"][pair][r]["mean"] for r in names]
        stds = [result["pairs"][pair][r].get("std") or 0 for r in names]
        ax.bar(range(len(names)), means, yerr=stds, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(pair)
        ax.set_ylabel(f"mIoU % ({result['split']})")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)
