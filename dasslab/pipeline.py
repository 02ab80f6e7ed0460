"""``stage=pipeline``: run the jobs of a results table, reusing finished stage runs.

``pipeline.jobs`` names every job a table may need; ``pipeline.rows`` the ones it reports::

    jobs:
      source_only: {stage: source}
      diffusion:   {stage: diffusion}
      baseline:    {stage: adapt, groups: {guidance: none},
                    needs: {segmenter.init_ckpt: source_only, diffusion_ckpt: diffusion}}

A job is the root config with ``stage=<stage>`` (the file ``conf/stage/<stage>.yaml``),
other config-group options swapped in (``groups``), values set (``set``) and the
checkpoints of upstream jobs filled in (``needs``: config key -> job). Jobs a row needs
run first, once. A job lists the dataset entries it requires (``requires``); when the
dataset lacks one, the row is skipped with the reason printed and recorded. ``watch``
(config key -> job) names optional upstreams: filled like ``needs`` where that job can run
on this dataset, left as they are (null) where it cannot, and the row runs either way
(the judge that scores what PTL trains on needs target labels; the adaptation does not).

Each job runs in ``paths.cache_dir/<stage>/<key>``: ``key`` is the hash of the job's
resolved config, minus what cannot change its result (``pipeline.ignore``, the sections
the stage declares it does not read, ``stage.ignore``, and those the job's own settings leave
unread, ``pipeline.jobs.<name>.ignore``: e.g. the DDPM of a row that translates nothing), plus the size and
mtime of the checkpoint files given by the user (an upstream job's checkpoint path
already holds that job's key, so a plan can be computed before anything runs).
Forgetting an entry in an ``ignore`` list costs a retrain, never a stale reuse.
A job whose ``DONE.json`` exists is reused; two processes that want the same job at
once serialise on a file lock (the second waits, then reuses).

Who runs a job (:mod:`dasslab.jobrun`): the pipeline process plans, locks and writes the records; a job
that trains as several processes (DDP: ``trainer.devices`` > 1) runs in a child process that starts its
own ranks, so no rank ever waits on a lock. Under ``hydra/launcher=slurm`` every job becomes a Slurm job of
its own with ``afterok`` dependencies on the jobs it needs, plus one job that writes the results, and the
pipeline returns once they are submitted (:mod:`dasslab.slurm`).

W&B (``logger=wandb``): every job's run is in the experiment's group (``logger.wandb.group``: the
experiment, or ``<experiment>/<sweep>`` in a multirun) with the job's row as its job type; the results,
reused jobs' included, go to one summary run of the experiment (:mod:`dasslab.wandb_report`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dasslab.config import CONF_DIR
from dasslab.errors import ConfigError
from dasslab.jobrun import World, launched_world, run_job
from dasslab.jobrun import die_with_parent as _die_with_parent
from dasslab.provenance import add_data_inputs
from dasslab.utils.io import atomic_write_text

log = logging.getLogger(__name__)

RUN_DIR = "@RUN_DIR@"          # stands for the job's own run dir while hashing
SWITCHED_OFF = ("adapt.self_training",)   # sections read only with `enabled: true`; left out of the key when off
CKPT_KEYS = ("segmenter.init_ckpt", "diffusion_ckpt", "guide_ckpt", "quality.judge_ckpt", "ptl.watch.judge_ckpt")


def load_option(group: str, option: str) -> DictConfig:
    """The content of ``conf/<group>/<option>.yaml``, over the options of the same group its ``defaults`` list
    (e.g. ptl/direct extends ptl/progressive)."""
    path = Path(CONF_DIR) / group / f"{option}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        raise ConfigError(f"pipeline: {group}={option}: no such option; expected one of {choices}")
    cfg = OmegaConf.load(path)
    bases = [load_option(group, str(d)) for d in cfg.pop("defaults", None) or [] if d != "_self_"]
    return OmegaConf.merge(*bases, cfg) if bases else cfg


@dataclass
class Job:
    """One planned stage run: its config, cache folder and the jobs it waits for."""

    name: str
    cfg: DictConfig
    key: str
    out: Path
    needs: list[str] = field(default_factory=list)

    @property
    def stage(self) -> str:
        return str(self.cfg.stage.name)

    @property
    def priority(self) -> int:
        """``pipeline.jobs.<name>.priority``: with ``pipeline.parallel`` > 1, ready jobs start highest first."""
        return int(self.cfg.pipeline.jobs[self.name.split("@seed")[0]].get("priority") or 0)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.ckpt"


def job_config(cfg: DictConfig, name: str, checkpoints: dict[str, Path], seed: int | None = None) -> DictConfig:
    """The config of job ``name`` with ``checkpoints`` (setting -> its upstream job's checkpoint) filled in."""
    job = cfg.pipeline.jobs[name]
    sub = copy.deepcopy(cfg)
    OmegaConf.set_struct(sub, False)
    # a stage by name (conf/stage/<name>.yaml) or written out in the job itself
    sub.stage = job.stage if isinstance(job.stage, DictConfig) else load_option("stage", job.stage)
    for group, option in (job.get("groups") or {}).items():
        sub[group] = load_option(group, option)
    if job.get("set"):
        sub.merge_with(job.set)
    for setting, path in checkpoints.items():
        OmegaConf.update(sub, setting, str(path), force_add=True)
    group = OmegaConf.select(cfg, "logger.wandb.group")          # the experiment's (resolved before renaming)
    sub.task_name = name
    if seed is not None:
        sub.seed = int(seed)
    sub.pipeline.filled = list(checkpoints)
    sub.pipeline.job_ignore = list(job.get("ignore") or [])
    if sub.get("logger") and sub.logger.get("wandb") is not None:    # logger.* is not in the cache key
        w = sub.logger.wandb
        w.group, w.job_type = str(group), name
        w.name = name if seed is None else f"{name}-seed{seed}"
        tags = OmegaConf.to_container(w.tags, resolve=True) if w.get("tags") is not None else []
        w.tags = list(dict.fromkeys([str(cfg.task_name), *map(str, tags)]))     # experiment, row, dataset, …
    return sub


def _label(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}@seed{seed}"


def _upstream_seed(cfg: DictConfig, upstream: str, seed: int | None) -> int | None:
    """A per-seed job needs the same seed's run of an upstream job that is itself per-seed
    (e.g. each seed's source-only model); a shared upstream (the DDPM) is run once."""
    return seed if seed is not None and cfg.pipeline.jobs[upstream].get("per_seed") else None


def job_upstreams(cfg: DictConfig, name: str) -> dict[str, str]:
    """``{setting: upstream job}`` that job ``name`` fills from other jobs: its ``needs``, plus its optional
    ``watch`` upstreams where they can run on this dataset (and ``pipeline.watch`` is on)."""
    job = cfg.pipeline.jobs[name]
    watch = (job.get("watch") or {}) if cfg.pipeline.get("watch", True) else {}
    return {**(job.get("needs") or {}), **{s: up for s, up in watch.items() if not _missing(cfg, up)}}


def check_job(jobs, name: str, chain: tuple) -> None:
    """One line when ``name`` is not among ``pipeline.jobs`` or is reached again through ``chain`` (a cycle)."""
    if name in chain:
        raise ConfigError(f"pipeline.jobs: circular needs {' -> '.join(chain + (name,))}")
    if name not in jobs:
        raise ConfigError(f"pipeline.jobs: unknown job {name!r}; expected one of {list(jobs)}")


def plan(cfg: DictConfig, rows) -> tuple[dict[str, Job], dict[str, str]]:
    """Every job ``rows`` need, in an order where each comes after what it needs; and the skipped rows."""
    jobs = cfg.pipeline.jobs
    planned: dict[str, Job] = {}
    skipped: dict[str, str] = {}

    def add(name: str, chain: tuple = (), seed: int | None = None) -> None:
        label = _label(name, seed)
        if label in planned:
            return
        check_job(jobs, name, chain)
        needs = {}                       # setting -> label of the upstream run that fills it
        for setting, upstream in job_upstreams(cfg, name).items():
            upstream_seed = _upstream_seed(cfg, upstream, seed)
            add(upstream, chain + (name,), upstream_seed)
            needs[setting] = _label(upstream, upstream_seed)
        sub = job_config(cfg, name, {s: planned[up].checkpoint for s, up in needs.items()}, seed)
        key = stage_key(sub)
        out = Path(cfg.paths.cache_dir) / str(sub.stage.name) / key
        sub.paths.output_dir = str(out)
        planned[label] = Job(label, sub, key, out, list(needs.values()))

    seeds = list(cfg.pipeline.get("seeds") or [])
    for row in rows:
        why = _missing(cfg, row)
        if why:
            skipped[row] = why
            continue
        if seeds and jobs[row].get("per_seed") and row in jobs:
            for seed in seeds:           # repeated with other seeds; what it needs only if per_seed too
                add(row, seed=int(seed))
        else:
            add(row)
    return planned, skipped


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(leaf, None)


def stage_key(sub: DictConfig) -> str:
    """A short hash of what determines a job's result: its resolved config and its input files."""
    probe = copy.deepcopy(sub)
    probe.paths.output_dir = RUN_DIR
    tree = OmegaConf.to_container(probe, resolve=True)
    ignore = [*(sub.pipeline.get("ignore") or []), *(sub.stage.get("ignore") or []),
              *(sub.pipeline.get("job_ignore") or [])]
    for dotted in ignore:
        _drop(tree, dotted)
    for dotted in SWITCHED_OFF:   # a section that is off is not read: hashed as if it were absent
        section = OmegaConf.select(sub, dotted)
        if section is not None and section.get("enabled") is False:
            _drop(tree, dotted)
    inputs = {}
    filled = set(sub.pipeline.get("filled") or [])   # upstream jobs: their path already holds their key
    for key in CKPT_KEYS:
        value = OmegaConf.select(sub, key)
        if key in filled:
            continue
        if value and Path(str(value)).is_file():
            st = Path(str(value)).stat()
            inputs[key] = [str(value), st.st_size, st.st_mtime_ns]
    add_data_inputs(sub, tree, inputs)    # the files of every dataset the job reads (dasslab.provenance)
    blob = json.dumps({"config": tree, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def job_log(job: Job) -> Path:
    """Where a job run in its own process (``pipeline.parallel`` > 1) writes its output."""
    return job.out.parent / f"{job.key}.log"


def _run_job_child(job: Job, reuse: bool, threads: int) -> dict:
    """:func:`run_job` in a worker process: the run's trust setting, a share of the CPU threads, and
    its output (Lightning's included) in :func:`job_log` rather than interleaved with the other jobs'."""
    import os
    import sys

    import torch

    from dasslab.utils.safe_load import trust_checkpoints

    _die_with_parent()
    log_path = job_log(job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as fh:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        torch.set_num_threads(threads)
        try:
            with trust_checkpoints(job.cfg.get("trust_checkpoint")):
                return run_job(job, reuse)
        except BaseException:
            import traceback

            traceback.print_exc()       # the whole story in the job's log; the parent prints one line
            raise


def execute(planned: dict[str, Job], reuse: bool = True, parallel: int = 1,
            world: World | None = None) -> dict[str, dict]:
    """Run the planned jobs; with ``parallel`` > 1, up to that many at once (each in its own spawned
    process, started as soon as every job it needs has finished). Jobs still share the per-job lock,
    so pipelines started side by side never train one job twice. The first failure stops the plan.
    With ``world`` (ranks launched outside dasslab) the jobs run one after the other on every rank
    (:func:`dasslab.jobrun.run_job`: rank 0 decides, the others follow)."""
    if parallel < 1:
        raise ConfigError(f"pipeline.parallel={parallel}: expected an integer >= 1 (jobs run at once)")
    if parallel == 1 or world is not None:
        return {name: run_job(job, reuse, world) for name, job in planned.items()}
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // parallel)
    pending, running, done, started = dict(planned), {}, {}, {}
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            for name, job in sorted(pending.items(), key=lambda item: -item[1].priority):
                if reuse and all(n in done for n in job.needs) and (job.out / "DONE.json").is_file():
                    done[name] = run_job(job, reuse)       # finished before: read here, no process to start
                    del pending[name]
                elif len(running) < parallel and all(n in done for n in job.needs):
                    running[pool.submit(_run_job_child, job, reuse, threads)] = name
                    started[name] = time.perf_counter()
                    print(f"[pipeline] {name}: started stage={job.stage} in {job.out} (output: {job_log(job)})",
                          flush=True)
                    del pending[name]
            if not running and not pending:
                break
            if not running:
                raise ConfigError(f"pipeline: jobs {list(pending)} wait for jobs that are not planned")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    done[name] = future.result()
                except BaseException as err:
                    print(f"[pipeline] {name}: failed ({type(err).__name__}: {err}); its output: "
                          f"{job_log(planned[name])}", flush=True)
                    for other in running:
                        other.cancel()
                    raise
                score = done[name].get("miou")
                print(f"[pipeline] {name}: done in {time.perf_counter() - started[name]:.0f} s"
                      + (f" (target-val mIoU {score:.2f})" if isinstance(score, (int, float)) else ""), flush=True)
    return {name: done[name] for name in planned}


def _missing(cfg: DictConfig, name: str) -> str | None:
    """Why job ``name`` (or one it needs) cannot run on this dataset, or None (also for an unknown job:
    :func:`plan` names those). Optional upstreams (``watch``) do not count."""
    if name not in cfg.pipeline.jobs:
        return None
    job = cfg.pipeline.jobs[name]
    for entry in job.get("requires") or []:
        if cfg.dataset.get(entry) is None:
            return f"needs dataset.{entry}, which dataset={cfg.dataset.name} does not have"
    for upstream in (job.get("needs") or {}).values():
        why = _missing(cfg, upstream)
        if why:
            return why
    return None


def _is_row(cfg: DictConfig, label: str) -> bool:
    """A result of ``pipeline.rows``: with seeds, a per-seed row is its seeded runs only (an unseeded run
    of it, planned because another job needs it, is not counted again)."""
    name, seeded, _ = label.partition("@seed")
    if name not in cfg.pipeline.rows:
        return False
    return bool(seeded) or not (cfg.pipeline.get("seeds") and cfg.pipeline.jobs[name].get("per_seed"))


def run_pipeline(cfg: DictConfig) -> dict:
    """Run ``pipeline.rows`` (and the jobs they need); write ``results.json`` and ``results.md``.

    Under ``hydra/launcher=slurm`` the jobs are submitted as Slurm jobs instead (:mod:`dasslab.slurm`) and
    the results are written by the last of them. Ranks of a launch of several processes
    (:func:`dasslab.jobrun.launched_world`) all run the jobs; rank 0 alone writes the results."""
    planned, skipped = plan(cfg, list(cfg.pipeline.rows))
    for row, why in skipped.items():
        print(f"[pipeline] {row}: skipped ({why})")
    if cfg.pipeline.get("dry_run"):
        print(plan_text(planned))
        return {"plan": {n: {"stage": j.stage, "run_dir": str(j.out), "needs": j.needs} for n, j in planned.items()}}
    from dasslab.slurm import hydra_slurm_params, submit_pipeline

    slurm = hydra_slurm_params()
    if slurm is not None:
        return submit_pipeline(cfg, planned, skipped, slurm, finish=write_results, reuse=bool(cfg.pipeline.reuse))
    world = launched_world()
    done = execute(planned, bool(cfg.pipeline.reuse), int(cfg.pipeline.get("parallel") or 1), world)
    if world is not None and world.rank > 0:
        return {}
    return write_results(cfg, planned, skipped, done)


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
    atomic_write_text(out / "results.md", md)
    print(md)
    if cfg.get("logger") and cfg.logger.get("wandb") is not None:
        from dasslab.wandb_report import log_experiment

        log_experiment(cfg, summary, rows, timings, md)
    return summary


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
        grouped.setdefault(row, {})[seed] = r
    out = {}
    for row, by_seed in grouped.items():
        entries = []
        for r in by_seed.values():
            entry = {"miou": r.get("miou"), "run_dir": r.get("run_dir")}
            for name, sub in (r.get("subsets") or {}).items():
                entry[name] = sub.get("miou") if isinstance(sub, dict) else sub
            entries.append(entry)
        if len(entries) == 1 and "" in by_seed:
            out[row] = entries[0]
            continue
        mean, std = mean_std(e["miou"] for e in entries)
        out[row] = {"miou": mean, "std": std, "seeds": [int(s) for s in by_seed],
                    "per_seed": {s: e for s, e in zip(by_seed, entries)}}
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


def results_markdown(summary: dict, dataset: str) -> str:
    cols = comparison_columns(summary)
    lines = [f"# Results on {dataset} (target val, mIoU %)", "",
             "| row | mIoU (± std, seeds) | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for row, e in summary.items():
        cells = comparison_cells(e)
        if e.get("skipped"):
            cells = {"gap closed": f"skipped: {e['skipped']}"}
        lines.append(f"| {row} | {miou_cell(e)} | " + " | ".join(cells.get(c, "") for c in cols) + " |")
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


def _guidance_label(g: dict) -> str:
    strength = f"shift={g.get('shift')}" if g.get("calibrate") else f"lambda={g.get('scale', 0)}"
    extra = [f"{k}={g[k]}" for k in ("lcg_input", "loss_on") if k in g]
    if g.get("through_denoiser"):
        extra.append("through denoiser")
    return ", ".join([strength, *extra])


def quality_stage(cfg: DictConfig) -> dict:
    """The translation-quality job: :func:`dasslab.analysis.translation_quality.measure` in the run dir."""
    from dasslab.analysis.translation_quality import measure

    for key in ("quality.judge_ckpt", "diffusion_ckpt", "guide_ckpt"):
        if not OmegaConf.select(cfg, key):
            raise ConfigError(f"stage=quality needs {key}=PATH (the pipeline fills it from its jobs)")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    q = measure(cfg, cfg.quality.judge_ckpt, cfg.diffusion_ckpt, cfg.guide_ckpt, out)
    return {"markdown": quality_markdown(q), "quality": str(out / "translation_quality.json")}


def quality_markdown(q: dict) -> str:
    """Consistency / domain score / high-frequency tables of :func:`dasslab.analysis.translation_quality.measure`."""
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


def plan_text(planned: dict[str, Job]) -> str:
    """One line per job: name, stage, run folder, what it waits for."""
    lines = []
    for name, job in planned.items():
        waits = ", ".join(job.needs) if job.needs else "nothing"
        lines.append(f"{name:<22} stage={job.stage:<10} {job.out}  waits for: {waits}")
    return "\n".join(lines)
