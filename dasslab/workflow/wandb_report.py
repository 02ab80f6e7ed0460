"""An experiment's results on W&B: one ``summary`` run in the experiment's group, written with the results.

The jobs of an experiment log their own W&B runs when they train; a job reused from the cache trains
no more, so its numbers would never reach the experiment's dashboard. The pipeline therefore ends with
one run (job type ``summary``, name ``<experiment>-summary``, in ``logger.wandb.group``) that holds:

* ``results``: the table of every row (mIoU, std, seeds, gap closed, share of the ceiling, whether the
  job was reused, its run folder), and each row's mIoU in the run summary (``miou/<row>``);
* ``miou_over_n``: the PTL rows' mIoU-over-n curves (their ``ptl_curve.json``), as a table and a plot;
* ``results_md``: ``results.md`` as the pipeline wrote it;
* as its config, the experiment's resolved config and ``run`` (git revision, versions).

Offline (``WANDB_MODE=offline``) it is written under ``<logger.wandb.save_dir>/wandb`` (the pipeline's
``paths.output_dir``), beside the offline runs of every job the pipeline ran: ``wandb sync <that folder>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

COLUMNS = ["row", "miou", "std", "seeds", "gap_closed", "ceiling_share", "reused", "seconds", "run_dir"]


def curves(rows: dict[str, dict]) -> list[list]:
    """``[label, n, step, miou]`` of every row's ``ptl_curve.json`` (rows that ran PTL with validation)."""
    points = []
    for label, result in rows.items():
        path = Path(str(result.get("run_dir") or "/nonexistent")) / "ptl_curve.json"
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        points += [[label, int(e["n"]), int(e.get("step", 0)), float(e["miou"])] for e in entries if "miou" in e]
    return points


def result_rows(summary: dict, rows: dict[str, dict], timings: dict[str, dict]) -> list[list]:
    """One line of :data:`COLUMNS` per summarized row."""
    out = []
    for row, e in summary.items():
        labels = [lb for lb in rows if lb.split("@seed")[0] == row]
        reused = all(timings.get(lb, {}).get("reused") for lb in labels) if labels else None
        seconds = sum(timings.get(lb, {}).get("seconds") or 0 for lb in labels) if labels else None
        run_dirs = [str(rows[lb].get("run_dir")) for lb in labels]
        out.append([row, e.get("miou"), e.get("std"), len(e.get("seeds") or []) or (1 if labels else 0),
                    e.get("gap_closed"), e.get("ceiling_share"), reused, seconds, ";".join(run_dirs)])
    return out


def log_experiment(cfg: DictConfig, summary: dict, rows: dict[str, dict], timings: dict[str, dict],
                   markdown: str) -> str:
    """Write the experiment's summary run; returns its W&B run id."""
    import wandb

    from dasslab.loggers import run_config

    w = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    out = Path(cfg.paths.output_dir)
    experiment = str(cfg.task_name)
    backbone = str(OmegaConf.select(cfg, "backbone.name") or "")
    tags = [t for t in dict.fromkeys([experiment, "summary", str(cfg.dataset.name), backbone]) if t]
    run = wandb.init(project=w.get("project"), group=w.get("group") or experiment, job_type="summary",
                     name=f"{experiment}-summary", tags=tags, dir=str(w.get("save_dir") or out),
                     config=run_config(cfg),
                     mode="offline" if w.get("offline") else None, reinit=True)
    try:
        table = wandb.Table(columns=COLUMNS, data=result_rows(summary, rows, timings))
        logged = {"results": table, "results_md": wandb.Html(f"<pre>{markdown}</pre>")}
        points = curves(rows)
        if points:
            curve_table = wandb.Table(columns=["row", "n", "step", "miou"], data=points)
            logged["miou_over_n"] = curve_table
            logged["miou_over_n_plot"] = wandb.plot.line(curve_table, "n", "miou", stroke="row",
                                                         title="target-val mIoU over the PTL domains")
        run.log(logged)
        for row, e in summary.items():
            if e.get("miou") is not None:
                run.summary[f"miou/{row}"] = e["miou"]
        return run.id
    finally:
        run.finish()
