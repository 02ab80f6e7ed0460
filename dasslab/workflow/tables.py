"""``dasslab-tables runs=DIR[,DIR…]|GLOB out=DIR``: run directories -> the paper's result tables.

Input: run directories (``.hydra/config.yaml`` + ``metrics.json``), Hydra multirun sweep folders
(``multirun.yaml`` + ``0/``, ``1/`` …, whose jobs may be experiments), ``dasslab-train stage=pipeline``
folders (``results.json`` naming each row's run), the pipeline cache (``outputs/cache``: each finished
job is a row named by its job), or any folder holding such directories (searched recursively); globs
are expanded. Runs of stages that report no mIoU (diffusion, translate, …) are not table rows. A run
reached several times (a cached source model that every experiment of a sweep reuses) counts once.

Output (``out``): one Markdown table and one CSV per (paper table, dataset) — the paper table
is read from the experiment name (``task_name: table2a_…`` -> Table 2; a pipeline's rows belong to its
experiment), other experiments get their own table and loose runs go to "runs" — plus ``tables.md``
with all of them. A paper table's rows are named and ordered as the paper's (source only first,
Table 2's (a)-(f) by their letters); rows that share a name show only the settings that tell them
apart (a swept ``ptl.N=…``, not every setting that follows from it). Columns as DASS papers print them: the IoU of
every class, then mIoU; for SYNTHIA -> Cityscapes the 16 scored classes, mIoU over 16 and
mIoU* over 13. Runs whose configs differ only in ``seed`` (and in paths, loggers, …: see
``IGNORE``) are one row: mean ± sample std (n - 1) over the seeds, with the number of runs.
The rows' statistics are :func:`dasslab.workflow.results.summarize`'s, as in the pipeline's results.md:
where a table holds the pipeline rows source_only, oracle, ceiling, ptl_none or baseline, each
row also gets gap closed, share of ceiling, paired gains per seed and "beats ptl_none/baseline".
A failed run (a run folder without a readable ``metrics.json``; a half-written or malformed
``metrics.json`` or pipeline ``results.json``: a JSON list, a truncated file, a ``run_dir`` that is
no path) or a missing one (a sweep job whose folder does not exist, a skipped pipeline row) is shown
as such in its row with the reason, never dropped and never a traceback. The paper's numbers
(``dasslab/workflow/paper_results.yaml``) are printed beside ours.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dasslab.errors import ConfigError
from dasslab.workflow.results import COMPARISON_NOTE, comparison_cells, comparison_columns, mean_std, summarize

# config keys that do not make two runs different settings (besides `seed`)
IGNORE = ("seed", "paths", "hydra", "logger", "callbacks", "resume", "task_name", "pipeline", "data.num_workers",
          "stage.datamodule", "stage.module",     # the builders' inputs: copies of the root's sections
          "trainer.enable_progress_bar", "trust_checkpoint", "eval.overlays", "translate.out_dir", "device")
PATH_LIKE = re.compile(r"(_ckpt|_dir|(^|\.)root|(^|\.)out_dir|(^|\.)translated_dir|(^|\.)weights)$")
NO_MIOU_STAGES = {"diffusion", "translate", "quality", "check", "judge", "pipeline"}
SHORT = {"sidewalk": "sidew.", "building": "build.", "traffic light": "light", "traffic sign": "sign",
         "vegetation": "veg.", "terrain": "terr.", "motorcycle": "mbike", "bicycle": "bike"}
PAPER_FILE = Path(__file__).with_name("paper_results.yaml")


# --------------------------------------------------------------------------- one run
@dataclass
class Run:
    path: Path
    status: str                                   # ok | failed | missing
    reason: str = ""
    config: dict = field(default_factory=dict)    # flattened "a.b.c" -> value
    describe: dict = field(default_factory=dict)  # the choices/overrides that name the setting
    metrics: dict | None = None
    row: str | None = None                        # pipeline row name
    experiment: str | None = None                 # the experiment (pipeline task_name) whose row it is

    @property
    def stage(self) -> str | None:
        s = self.config.get("stage.name", self.config.get("stage"))
        return s if isinstance(s, str) else None


def flatten(node, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    else:
        out[prefix] = node
    return out


def _resolve(cfg) -> dict:
    """A saved config as plain data; interpolations that cannot be resolved here stay as text."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    try:
        from hydra.core.utils import setup_globals

        setup_globals()  # Hydra's resolvers (now, hydra) so saved configs resolve like at run time
    except Exception:  # noqa: BLE001
        pass

    def walk(node):
        if isinstance(node, DictConfig):
            out = {}
            for k in node.keys():
                try:
                    v = node[k]
                except Exception:  # noqa: BLE001 - e.g. ${hydra:…} outside a Hydra job
                    v = OmegaConf.to_container(node, resolve=False).get(k)
                out[str(k)] = walk(v)
            return out
        if isinstance(node, ListConfig):
            try:
                return OmegaConf.to_container(node, resolve=True)
            except Exception:  # noqa: BLE001
                return OmegaConf.to_container(node, resolve=False)
        return node

    return walk(cfg)


def read_config(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    try:
        return flatten(_resolve(OmegaConf.load(path)))
    except Exception:  # noqa: BLE001 - an unreadable config: the run is still listed
        return {}


def read_describe(run_dir: Path) -> dict:
    """The config-group choices and command-line overrides of a Hydra job (what names its setting)."""
    out = {}
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            h = yaml.safe_load(hydra_yaml.read_text()) or {}
            for k, v in ((h.get("hydra") or {}).get("runtime") or {}).get("choices", {}).items():
                if not str(k).startswith("hydra/") and k not in ("paths", "logger", "callbacks"):
                    out[str(k)] = v
        except Exception:  # noqa: BLE001
            pass
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        try:
            for o in yaml.safe_load(overrides.read_text()) or []:
                k, _, v = str(o).lstrip("+~").partition("=")
                out[k] = v
        except Exception:  # noqa: BLE001
            pass
    return out


def load_run(run_dir: Path, row: str | None = None) -> Run:
    """A run folder: ok with its metrics, or failed with the reason."""
    config, describe = read_config(run_dir), read_describe(run_dir)
    run = Run(run_dir, "ok", config=config, describe=describe, row=row)
    mpath = run_dir / "metrics.json"
    if not run_dir.is_dir():
        run.status, run.reason = "missing", "run folder not found"
    elif not mpath.is_file():
        run.status, run.reason = "failed", "no metrics.json (failed or unfinished)"
    else:
        try:
            run.metrics = json.loads(mpath.read_text())
            problem = metrics_problem(run.metrics)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as e:      # a half-written or malformed file: a failed row, with the reason
            run.status, run.reason, run.metrics = "failed", f"unreadable metrics.json ({e})", None
    return run


def _number(v) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def metrics_problem(m) -> str | None:
    """What makes a ``metrics.json`` record unusable for a table (None: usable): a JSON list or text instead of
    a record, no mIoU, values that are not numbers."""
    if not isinstance(m, dict):
        return f"holds a JSON {type(m).__name__}, not a record"
    if "miou" not in m:
        return "no 'miou'"
    if not _number(m["miou"]):
        return f"'miou' is {m['miou']!r}, not a number"
    per_class = m.get("per_class_iou")
    if per_class is not None and not (isinstance(per_class, dict) and all(map(_number, per_class.values()))):
        return "'per_class_iou' is not a record of numbers"
    if m.get("classes") is not None and not isinstance(m["classes"], list):
        return "'classes' is not a list"
    subsets = m.get("subsets")
    if subsets is not None and not (isinstance(subsets, dict) and all(
            isinstance(v, dict) and _number(v.get("miou")) for v in subsets.values())):
        return "'subsets' is not a record of {miou: …} records"
    return None


# --------------------------------------------------------------------------- finding runs
def sweep_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override lists of a multirun's jobs in job-number order (what Hydra's basic sweeper made)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()) or {}
    h = cfg.get("hydra") or {}
    params = (h.get("sweeper") or {}).get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list((h.get("overrides") or {}).get("task") or [])
    overrides = OverridesParser.create().parse_overrides(args)
    return BasicSweeper.split_arguments(overrides, None)[0]


def _missing_job(sweep_dir: Path, num: int, overrides: list[str]) -> Run:
    from omegaconf import OmegaConf

    base = flatten(_resolve(OmegaConf.load(sweep_dir / "multirun.yaml")))
    prefix = "hydra.runtime.choices."
    describe = {k[len(prefix):]: v for k, v in base.items()
                if k.startswith(prefix) and not k.startswith(prefix + "hydra/") and k[len(prefix):] not in
                ("paths", "logger", "callbacks")}
    base = {k: v for k, v in base.items() if not k.startswith("hydra.")}
    for o in overrides:
        k, _, v = o.lstrip("+~").partition("=")
        describe[k] = v
        base[k] = yaml.safe_load(v) if v else v
    return Run(sweep_dir / str(num), "missing", "job folder not found (not run, or lost)", base, describe)


def runs_in_sweep(sweep_dir: Path) -> list[Run]:
    try:
        jobs = sweep_jobs(sweep_dir)
    except Exception:  # noqa: BLE001 - an odd sweep file: fall back to the job folders found
        jobs = []
    found = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    nums = sorted(set(range(len(jobs))) | {int(p.name) for p in found})
    runs = []
    for n in nums:
        job_dir = sweep_dir / str(n)
        if job_dir.is_dir():
            runs.extend(runs_in_run_dir(job_dir))
        else:
            runs.append(_missing_job(sweep_dir, n, jobs[n]))
    return runs


def runs_in_pipeline(run_dir: Path) -> list[Run]:
    """The rows of a ``stage=pipeline`` run (``results.json``: row -> {miou, run_dir}, {per_seed: {seed: {miou,
    run_dir}}} for a row run per seed, or {skipped}): one run per seed."""
    config = read_config(run_dir)
    root, experiment = config.get("paths.root_dir"), config.get("task_name")
    experiment = str(experiment) if experiment else None
    describe = read_describe(run_dir)              # the experiment's choices and overrides (a sweep job's)

    def failed(row: str, reason: str) -> Run:
        return Run(run_dir, "failed", reason, row=row, config=config, describe={**describe, "row": row},
                   experiment=experiment)

    path = run_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:           # half-written: one failed row for the pipeline, with the reason
        return [failed("results.json", f"unreadable {path} ({e})")]
    if not isinstance(results, dict):
        return [failed("results.json", f"{path} holds a JSON {type(results).__name__}, not a record of rows")]
    runs = []
    for row, r in results.items():
        if not isinstance(r, dict):
            continue
        # a row run per seed: one run per seed (per_seed: {seed: {miou, run_dir}})
        entries = list((r.get("per_seed") or {}).values()) if isinstance(r.get("per_seed"), dict) else [r]
        if r.get("skipped") or not any(isinstance(e, dict) and e.get("run_dir") for e in entries):
            runs.append(Run(run_dir, "missing", f"row skipped: {r.get('skipped', 'no run')}", row=row,
                            config=config, describe={**describe, "row": row}, experiment=experiment))
            continue
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("run_dir"), str):
                got = e.get("run_dir") if isinstance(e, dict) else e
                runs.append(failed(row, f"{path}: row {row}'s run_dir is {got!r}, not a folder path"))
                continue
            where = Path(e["run_dir"])
            for cand in (where, Path(root) / where if root else None, run_dir / where):
                if cand is not None and cand.is_dir():
                    where = cand
                    break
            run = load_run(where, row=row)
            run.experiment, run.describe = experiment, {**describe, **run.describe}
            if run.status == "missing":
                run.reason = f"row {row}: run folder {e['run_dir']} not found"
            runs.append(run)
    return runs


def runs_in_run_dir(run_dir: Path) -> list[Run]:
    if (run_dir / "results.json").is_file() and not (run_dir / "metrics.json").is_file():
        return runs_in_pipeline(run_dir)
    run = load_run(run_dir)
    if (run_dir / "DONE.json").is_file() and run.config.get("task_name") and run.stage not in NO_MIOU_STAGES:
        run.row = str(run.config["task_name"])          # a pipeline job in the cache: a row named by its job
    return [run]


def merge_duplicates(runs: list[Run]) -> list[Run]:
    """Each run folder once per table (rows of several pipelines may name one cached run): the first of them,
    with the describing settings all of them agree on (a sweep's N is no setting of the source model that
    its jobs share)."""
    first: dict[tuple, Run] = {}
    out = []
    for run in runs:
        key = (str(run.path.resolve()), run.row, table_id(run)) if run.status != "missing" else (id(run),)
        if key not in first:
            first[key] = run
            out.append(run)
            continue
        kept = first[key]
        kept.describe = {k: v for k, v in kept.describe.items() if run.describe.get(k) == v}
    return out


def _is_run(d: Path) -> bool:
    return (d / ".hydra" / "config.yaml").is_file() or (d / "metrics.json").is_file() or (d / "results.json").is_file()


def find_runs(inputs: Iterable[str | Path]) -> list[Run]:
    """Every run under ``inputs`` (folders or globs), each once, in the order given."""
    dirs: list[Path] = []
    for item in inputs:
        item = str(item)
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise ConfigError(f"runs={item}: nothing matches this pattern")
        for m in matches:
            p = Path(m).expanduser()
            if not p.is_dir():
                if glob.has_magic(item):
                    continue
                from dasslab.utils.paths import link_problem

                raise ConfigError(f"runs={item}: {link_problem(p) or 'folder not found'}; expected run folders or "
                                  f"sweep folders")
            dirs.append(p)
    runs: list[Run] = []
    seen: set[Path] = set()

    def visit(d: Path) -> None:
        key = d.resolve()
        if key in seen:
            return
        seen.add(key)
        if (d / "multirun.yaml").is_file():
            runs.extend(runs_in_sweep(d))
            seen.update(p.resolve() for p in d.iterdir() if p.is_dir())
        elif _is_run(d):
            runs.extend(runs_in_run_dir(d))
        else:
            for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                visit(sub)

    for d in dirs:
        visit(d)
    return merge_duplicates([r for r in runs if r.row is not None or r.stage not in NO_MIOU_STAGES])


# --------------------------------------------------------------------------- grouping
def ignored(key: str, extra: Sequence[str] = ()) -> bool:
    for pat in (*IGNORE, *extra):
        if key == pat or key.startswith(pat + "."):
            return True
    return bool(PATH_LIKE.search(key))


def setting_key(run: Run, extra_ignore: Sequence[str] = ()) -> tuple:
    items = {k: v for k, v in run.config.items() if not ignored(k, extra_ignore)}
    if run.row:
        items["row"] = run.row
    if not items:  # no config at all: a setting of its own
        items["path"] = str(run.path)
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in items.items()))


@dataclass
class Row:
    runs: list[Run]
    label: str = ""
    paper: dict | None = None

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.status == "ok"]

    @property
    def first(self) -> Run:
        return (self.ok or self.runs)[0]

    def values(self, metric: str) -> list[float]:
        out = []
        for r in self.ok:
            v = metric_value(r.metrics, metric)
            if v is not None:
                out.append(v)
        return out

    def status(self) -> str:
        bad = [r for r in self.runs if r.status != "ok"]
        if not bad:
            return "ok"
        kinds = sorted({r.status for r in bad})
        return ", ".join(f"{sum(r.status == k for r in bad)} {k}" for k in kinds)


def metric_value(metrics: dict | None, name: str) -> float | None:
    """``miou``, ``miou16``/``miou13`` (top level or under ``subsets``), or ``iou:<class>``."""
    if not metrics:
        return None
    if name.startswith("iou:"):
        v = (metrics.get("per_class_iou") or {}).get(name[4:])
    else:
        v = metrics.get(name)
        if v is None and isinstance((metrics.get("subsets") or {}).get(name), dict):
            v = metrics["subsets"][name].get("miou")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def table_id_of(experiment: str | None) -> str | None:
    """``Table N`` for a paper experiment's name (``table2f_full``), else None."""
    m = re.match(r"table(\d+)", str(experiment or ""))
    return f"Table {m.group(1)}" if m else None


def table_id(run: Run) -> str:
    """The table a run belongs to: its experiment's paper table, or the experiment (a pipeline's rows), or
    the paper table of its own task name, else "runs"."""
    return (table_id_of(run.experiment) or run.experiment or table_id_of(run.config.get("task_name"))
            or "runs")


def dataset_of(run: Run) -> str:
    return str(run.config.get("dataset.name") or (run.metrics or {}).get("dataset") or "unknown dataset")


def group(runs: Sequence[Run], extra_ignore: Sequence[str] = ()) -> dict[tuple[str, str], list[Row]]:
    """``{(table, dataset): [Row, …]}``; rows in the order their first run was found."""
    tables: dict[tuple[str, str], dict[tuple, Row]] = {}
    for run in runs:
        t = tables.setdefault((table_id(run), dataset_of(run)), {})
        t.setdefault(setting_key(run, extra_ignore), Row([])).runs.append(run)
    out = {}
    for key, rows in tables.items():
        rows = list(rows.values())
        _label(rows, extra_ignore, key[0])
        if key[0].startswith("Table") and all(r.first.row for r in rows):    # the paper's order
            rows.sort(key=lambda r: (FIRST_ROWS.get(r.label.split(",")[0], 9), r.label))
        out[key] = rows
    return out


# Table 2's rows as the paper names them (pipeline row -> name); a row of another paper table is named by its
# experiment (table3a_ada_only -> "(a) ada only", table5_alternate -> "alternate").
TABLE2_ROWS = {"baseline": "(a) baseline φ^N", "wo_sgg": "(b) w/o SGG", "wo_ptl": "(c) w/o PTL",
               "wo_lcg": "(d) w/o LCG", "wo_gsg": "(e) w/o GSG", "full": "(f) SGG + PTL"}
FIRST_ROWS = {"source only": 0, "oracle": 1, "ceiling": 2}


def paper_row_name(row: str, experiment: str | None) -> str:
    """A pipeline row's name in its paper table (see :data:`TABLE2_ROWS`)."""
    if row == "source_only":
        return "source only"
    if table_id_of(experiment) == "Table 2" and row in TABLE2_ROWS:
        return TABLE2_ROWS[row]
    m = re.match(r"table\d+([a-z]?)_(.+)", str(experiment or ""))
    if row == "full" and m:
        return (f"({m.group(1)}) " if m.group(1) else "") + m.group(2).replace("_", " ")
    return row


def _varying(descs: list[dict]) -> list[str]:
    """The keys whose values differ between ``descs``, less those that vary in step with an earlier key
    (``translate.depth`` follows a swept ``ptl.N``: only ``ptl.N`` is shown)."""
    keys, seen = [], set()
    for k in sorted({k for d in descs for k in d}):
        values = [str(d.get(k, "\0absent")) for d in descs]
        if len(set(values)) < 2:
            continue
        pattern = tuple(values.index(v) for v in values)      # which rows share a value
        if pattern not in seen:
            seen.add(pattern)
            keys.append(k)
    return keys


def _label(rows: list[Row], extra_ignore: Sequence[str], table: str = "runs") -> None:
    """Name each row: its row name (a paper table's own name for it, see :func:`paper_row_name`), then — among
    rows of one name — the choices/overrides that tell them apart (the swept settings); where those leave two
    rows alike, the config keys that do (at most 6)."""
    def desc(row: Row) -> dict:
        d = {}
        for r in row.runs:
            for k, v in r.describe.items():
                if k not in ("seed", "row") and not ignored(k, extra_ignore):
                    d.setdefault(k, v)
        return d

    def name(row: Row) -> str | None:
        r = row.first
        if r.row is None:
            return None
        return paper_row_name(r.row, r.experiment or r.config.get("task_name")) if table.startswith("Table") \
            else r.row

    def labels(members: list[Row], descs: list[dict], limit: int | None = None) -> list[str]:
        varying = _varying(descs)[:limit]
        return [", ".join(([name(row)] if name(row) else []) + [f"{k}={d[k]}" for k in varying if k in d])
                for row, d in zip(members, descs)]

    by_name: dict[str | None, list[Row]] = {}
    for row in rows:
        by_name.setdefault(name(row), []).append(row)
    for members in by_name.values():
        names = labels(members, [desc(r) for r in members])
        if len(set(names)) < len(names):  # the choices do not tell the rows apart: the config does
            cfgs = [{k: json.dumps(v, default=str) for k, v in r.first.config.items()
                     if not ignored(k, extra_ignore)} for r in members]
            names = labels(members, cfgs, limit=6)
        for row, label in zip(members, names):
            row.label = label or str(row.first.config.get("task_name") or row.first.path.name)


# --------------------------------------------------------------------------- the paper's numbers
def load_paper(path: str | Path = PAPER_FILE) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return list(data.get("rows") or [])


def _matches(run: Run, match: dict) -> bool:
    for key, want in match.items():
        have = run.row if key == "row" and run.row else run.config.get(key)
        if key == "row" and not run.row or key == "task_name" and run.experiment:
            have = run.experiment or run.config.get("task_name")
        options = want if isinstance(want, list) else [want]
        if str(have) not in {str(o) for o in options}:
            return False
    return True


def attach_paper(tables: dict[tuple[str, str], list[Row]], paper: list[dict]) -> None:
    for rows in tables.values():
        for row in rows:
            for entry in paper:
                match = entry.get("match") or []
                if any(_matches(row.first, m) for m in (match if isinstance(match, list) else [match]) if m):
                    row.paper = entry
                    break


# --------------------------------------------------------------------------- layout
@dataclass
class Layout:
    classes: list[str]
    summary: list[tuple[str, str]]  # (metric key, column title)


def layout(rows: Sequence[Row]) -> Layout:
    """Per-class columns + summary columns, as DASS papers print them for this dataset."""
    metrics = [r.metrics for row in rows for r in row.ok if r.metrics]
    if not metrics:
        return Layout([], [("miou", "mIoU")])
    m = metrics[0]
    classes = list(m.get("classes") or (m.get("per_class_iou") or {}).keys())
    subsets = m.get("subsets") or {}
    if "miou16" in subsets or "miou16" in m:  # SYNTHIA -> Cityscapes: 16 classes, mIoU (16) and mIoU* (13)
        sub = subsets.get("miou16", {}).get("classes") if isinstance(subsets.get("miou16"), dict) else None
        return Layout(list(sub or classes), [("miou16", "mIoU"), ("miou13", "mIoU*")])
    return Layout(classes, [("miou", "mIoU")])


def _fmt(values: list[float], digits: int = 1) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def row_names(rows: Sequence[Row]) -> list[str]:
    """Each row's name in :func:`table_summary`: its pipeline row name (source_only, ceiling, …) where the
    table's rows have distinct ones, else its label (numbered where labels repeat)."""
    names = [r.first.row or r.label for r in rows]
    if len(set(names)) < len(names):
        names = [r.label for r in rows]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def table_summary(rows: Sequence[Row], metric: str) -> dict[str, dict]:
    """:func:`dasslab.workflow.results.summarize` of the table's finished runs on ``metric``, keyed by
    :func:`row_names`: mean ± std over seeds, and the comparisons with source_only/oracle/ceiling/ptl_none/baseline
    rows. A row
    with one finished run is a run shared by every seed (as a pipeline job that is not per seed)."""
    results = {}
    for name, row in zip(row_names(rows), rows):
        if len(row.ok) == 1:
            results[name] = {"miou": metric_value(row.ok[0].metrics, metric), "run_dir": str(row.ok[0].path)}
            continue
        seeds = [r.config.get("seed") for r in row.ok]
        if not all(isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
            seeds = list(range(len(row.ok)))       # no (distinct) seeds recorded: runs numbered, not paired by seed
        for seed, run in zip(seeds, row.ok):
            results[f"{name}@seed{seed}"] = {"miou": metric_value(run.metrics, metric), "run_dir": str(run.path)}
    return summarize(results)


def _paper_cell(row: Row, lay: Layout) -> str:
    if not row.paper:
        return ""
    vals = [row.paper.get(k) for k, _ in lay.summary]
    return " / ".join("—" if v is None else f"{float(v):.1f}" for v in vals)


def _summary_cell(entry: dict, digits: int = 1) -> str:
    """A row's mean ± std from :func:`table_summary` (``—`` without a value)."""
    if entry.get("miou") is None:
        return "—"
    std = entry.get("std")
    return f"{entry['miou']:.{digits}f}" if std is None else f"{entry['miou']:.{digits}f} ± {std:.{digits}f}"


def _runs_cell(row: Row) -> str:
    n_ok = len(row.values(row_metric(row)))
    cell = f"{n_ok}/{len(row.runs)}"
    status = row.status()
    return cell if status == "ok" else f"{cell} ({status})"


def row_metric(row: Row) -> str:
    return "miou16" if any(metric_value(r.metrics, "miou16") is not None for r in row.ok) else "miou"


def _filled_columns(summary: dict[str, dict]) -> list[str]:
    """The comparison columns that some row of the summary fills (none for a table without the pipeline's
    reference rows: a sweep, or runs of one setting)."""
    cells = [comparison_cells(e) for e in summary.values()]
    return [c for c in comparison_columns(summary) if any(cell.get(c) for cell in cells)]


def markdown(title: str, rows: Sequence[Row], lay: Layout) -> str:
    with_paper = any(r.paper for r in rows)
    summaries = {key: table_summary(rows, key) for key, _ in lay.summary}
    main = summaries[lay.summary[0][0]]
    cols = _filled_columns(main)
    names = row_names(rows)
    head = ["setting", "runs", *[SHORT.get(c, c) for c in lay.classes], *[t for _, t in lay.summary], *cols]
    head += ["paper " + " / ".join(t for _, t in lay.summary)] if with_paper else []
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":--", "--:"] + ["--:"] * (len(head) - 2)) + "|"]
    for name, row in zip(names, rows):
        if not row.ok:
            reason = "; ".join(sorted({r.reason for r in row.runs}))
            cells = [row.label, _runs_cell(row)] + ["—"] * len(lay.classes)
            cells += [f"**{row.runs[0].status}**" if i == 0 else "—" for i in range(len(lay.summary))]
            cells += [""] * len(cols)
            cells += [_paper_cell(row, lay)] if with_paper else []
            lines.append("| " + " | ".join(cells) + " |")
            lines.append(f"|   ↳ {reason} |" + " |" * (len(head) - 1))
            continue
        cells = [row.label, _runs_cell(row)]
        cells += [_fmt(row.values(f"iou:{c}")) for c in lay.classes]
        cells += [_summary_cell(summaries[k].get(name, {})) for k, _ in lay.summary]
        compared = comparison_cells(main.get(name, {}))
        cells += [compared.get(c, "") for c in cols]
        cells += [_paper_cell(row, lay)] if with_paper else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "IoU in percent; mean ± sample std over seeds; runs = finished/all."]
    if cols:
        lines.append(f"Comparisons on {lay.summary[0][1]}: {COMPARISON_NOTE}")
        lines += [f"Note: {e['note']}." for e in main.values() if e.get("note")]
    if with_paper:
        sources = sorted({str(r.paper.get("source", "")) for r in rows if r.paper} - {""})
        lines.append("Paper: " + "; ".join(sources) if sources else "Paper: dasslab/workflow/paper_results.yaml")
    return "\n".join(lines) + "\n"


CSV_COMPARISONS = (("gap closed", "gap_closed"), ("share of ceiling", "ceiling_share"),
                   ("paired gain mean", "paired_gain_mean"), ("wins", "wins"), ("paired", "n_paired"),
                   ("beats ptl_none", "beats_ptl_none"), ("beats baseline", "beats_baseline"))


def csv_text(title: str, rows: Sequence[Row], lay: Layout) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    summaries = {key: table_summary(rows, key) for key, _ in lay.summary}
    main = summaries[lay.summary[0][0]]
    names = row_names(rows)
    titles = [*lay.classes, *[t for _, t in lay.summary]]
    w.writerow(["table", "setting", "runs_ok", "runs", "status", *[x for t in titles for x in (t, f"{t} std")],
                *[t for t, _ in CSV_COMPARISONS], *[f"paper {t}" for _, t in lay.summary], "run_dirs"])

    def num(v):
        return "" if v is None else f"{v:.4f}"

    for name, row in zip(names, rows):
        vals = []
        for c in lay.classes:
            vals += [num(x) for x in mean_std(row.values(f"iou:{c}"))]
        for key, _ in lay.summary:
            entry = summaries[key].get(name, {})
            vals += [num(entry.get("miou")), num(entry.get("std"))]
        entry = main.get(name, {})
        compared = [("" if entry.get(k) is None else entry[k]) for _, k in CSV_COMPARISONS]
        paper = [("" if not row.paper or row.paper.get(k) is None else row.paper[k]) for k, _ in lay.summary]
        w.writerow([title, row.label, len(row.ok), len(row.runs), row.status(), *vals, *compared, *paper,
                    ";".join(str(r.path) for r in row.runs)])
    return buf.getvalue()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def write_tables(runs: Sequence[Run], out_dir: str | Path, paper_file: str | Path = PAPER_FILE,
                 extra_ignore: Sequence[str] = ()) -> dict[str, str]:
    """Write ``<table>_<dataset>.md/.csv`` and ``tables.md`` into ``out_dir``; returns {title: markdown}."""
    from dasslab.utils.io import atomic_write_text, make_output_folder

    if not runs:
        raise ConfigError("runs=…: no run folders found (expected .hydra/config.yaml, metrics.json, "
                          "results.json or multirun.yaml inside)")
    out = make_output_folder(out_dir, "out")
    tables = group(runs, extra_ignore)
    attach_paper(tables, load_paper(paper_file))
    order = sorted(tables, key=lambda k: (k[0] == "runs", k[0], k[1]))
    result = {}
    for tid, dataset in order:
        rows = tables[(tid, dataset)]
        lay = layout(rows)
        title = f"{tid} — {dataset}"
        md = markdown(title, rows, lay)
        atomic_write_text(out / f"{slug(tid)}_{slug(dataset)}.md", md)
        atomic_write_text(out / f"{slug(tid)}_{slug(dataset)}.csv", csv_text(title, rows, lay))
        result[title] = md
    atomic_write_text(out / "tables.md", "\n".join(result.values()))
    return result
