"""The job plan of ``stage=pipeline``: which jobs a results table needs, their configs, cache keys and order.

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
A job may be *wanted* only by some of the jobs that list it (``wanted``: a function of the needing job's
config, e.g. the calibration only where a translation setting is ``auto``; elsewhere the setting is left as
it is), and may *inherit* config sections from the job that needs it (``inherit``: the calibration measures
the guidance of the row it calibrates); variants that end up with one cache key are one job.

Each job runs in ``paths.cache_dir/<stage>/<key>``: ``key`` is the hash of the job's
resolved config, minus what cannot change its result (``pipeline.ignore``, the sections
the stage declares it does not read, ``stage.ignore``, and those the job's own settings leave
unread, ``pipeline.jobs.<name>.ignore``: e.g. the DDPM of a row that translates nothing), plus the size and
mtime of the checkpoint files given by the user (an upstream job's checkpoint path
already holds that job's key, so a plan can be computed before anything runs).
Forgetting an entry in an ``ignore`` list costs a retrain, never a stale reuse.
A job whose ``DONE.json`` exists is reused; two processes that want the same job at
once serialise on a file lock (the second waits, then reuses).

The plan is the one planner of dasslab: the local runner (:mod:`dasslab.workflow.execute`), the Slurm path
(:mod:`dasslab.workflow.slurm`), ``dasslab-reproduce`` (:mod:`dasslab.workflow.reproduce`) and the results
(:mod:`dasslab.workflow.results`) all read the jobs it returns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from dasslab.config import CONF_DIR
from dasslab.errors import ConfigError
from dasslab.provenance import add_data_inputs

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
        return int(self.cfg.pipeline.jobs[job_name(self.name)].get("priority") or 0)

    @property
    def checkpoint(self) -> Path:
        """What the jobs that need this one are given: the stage's ``product`` (default its last checkpoint)."""
        return self.out / str(self.cfg.stage.get("product") or "checkpoints/last.ckpt")


def job_config(cfg: DictConfig, name: str, checkpoints: dict[str, Path], seed: int | None = None,
               inherited: dict | None = None) -> DictConfig:
    """The config of job ``name`` with ``checkpoints`` (setting -> its upstream job's checkpoint) filled in and
    the ``inherited`` sections (section -> value, from the job that needs this one) in place of its own."""
    job = cfg.pipeline.jobs[name]
    sub = copy.deepcopy(cfg)
    OmegaConf.set_struct(sub, False)
    # a stage by name (conf/stage/<name>.yaml) or written out in the job itself
    sub.stage = job.stage if isinstance(job.stage, DictConfig) else load_option("stage", job.stage)
    for group, option in (job.get("groups") or {}).items():
        sub[group] = load_option(group, option)
    if job.get("set"):
        sub.merge_with(job.set)
    for section, value in (inherited or {}).items():
        sub[section] = value
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
        # every job's offline run in the pipeline's folder (not the job's cache folder): one `wandb sync` for all
        w.save_dir = str(Path(str(OmegaConf.select(cfg, "logger.wandb.save_dir"))).resolve())
        w.name = name if seed is None else f"{name}-seed{seed}"
        tags = OmegaConf.to_container(w.tags, resolve=True) if w.get("tags") is not None else []
        w.tags = list(dict.fromkeys([str(cfg.task_name), *map(str, tags)]))     # experiment, row, dataset, …
    return sub


def job_name(label: str) -> str:
    """The ``pipeline.jobs`` name of a planned job's label (``full@seed1``, ``calibrate~3f2a1c``, a suite's
    ``digits/full@seed1``)."""
    return label.rsplit("/", 1)[-1].split("@seed")[0].split("~")[0]


def _label(name: str, seed: int | None) -> str:
    return name if seed is None else f"{name}@seed{seed}"


def _seeded(cfg: DictConfig, name: str) -> bool:
    """Whether job ``name`` runs once per seed: it is ``per_seed``, or it needs a job that does (the calibration
    of a per-seed source model is that seed's)."""
    job = cfg.pipeline.jobs[name]
    return bool(job.get("per_seed")) or any(up in cfg.pipeline.jobs and _seeded(cfg, up)
                                            for up in (job.get("needs") or {}).values())


def _upstream_seed(cfg: DictConfig, upstream: str, seed: int | None) -> int | None:
    """A per-seed job needs the same seed's run of an upstream job that is itself per-seed
    (e.g. each seed's source-only model, and the calibration made with it); a shared upstream (the DDPM) is run
    once."""
    return seed if seed is not None and _seeded(cfg, upstream) else None


def job_upstreams(cfg: DictConfig, name: str, own: DictConfig | None = None) -> dict[str, str]:
    """``{setting: upstream job}`` that job ``name`` fills from other jobs: its ``needs`` (less those whose job
    is not ``wanted`` by this job's config ``own``), plus its optional ``watch`` upstreams where they can run
    on this dataset (and ``pipeline.watch`` is on)."""
    jobs = cfg.pipeline.jobs
    job = jobs[name]
    own = job_config(cfg, name, {}) if own is None else own
    needs = {s: up for s, up in (job.get("needs") or {}).items()
             if up not in jobs or not jobs[up].get("wanted") or get_object(str(jobs[up].wanted))(own)}
    watch = (job.get("watch") or {}) if cfg.pipeline.get("watch", True) else {}
    return {**needs, **{s: up for s, up in watch.items() if not unmet_requirement(cfg, up)}}


def inherited_sections(cfg: DictConfig, upstream: str, own: DictConfig) -> dict | None:
    """The sections job ``upstream`` takes from the job that needs it (its ``inherit`` list) where they differ
    from the root config's (None where none does: the upstream is the shared one)."""
    out = {}
    for section in cfg.pipeline.jobs[upstream].get("inherit") or []:
        mine, root = OmegaConf.select(own, section), OmegaConf.select(cfg, section)
        # as written: a value set for this job shows, an interpolation (``${paths.output_dir}/…``) is the same text
        plain = [OmegaConf.to_container(v, resolve=False) if isinstance(v, DictConfig) else v for v in (mine, root)]
        if plain[0] != plain[1]:
            out[str(section)] = copy.deepcopy(mine)
    return out or None


def _digest(tree: dict) -> str:
    blob = json.dumps({k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
                       for k, v in tree.items()}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:6]


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
    aliases: dict[str, str] = {}         # a label -> the planned label of the same job (same cache folder)

    def add(name: str, chain: tuple = (), seed: int | None = None, inherited: dict | None = None) -> str:
        label = _label(name, seed) + (f"~{_digest(inherited)}" if inherited else "")
        if label in planned or label in aliases:
            return aliases.get(label, label)
        check_job(jobs, name, chain)
        own = job_config(cfg, name, {}, seed, inherited)     # its own settings, before its upstreams
        needs = {}                       # setting -> label of the upstream run that fills it
        for setting, upstream in job_upstreams(cfg, name, own).items():
            upstream_seed = _upstream_seed(cfg, upstream, seed)
            needs[setting] = add(upstream, chain + (name,), upstream_seed, inherited_sections(cfg, upstream, own))
        sub = job_config(cfg, name, {s: planned[up].checkpoint for s, up in needs.items()}, seed, inherited)
        key = stage_key(sub)
        out = Path(cfg.paths.cache_dir) / str(sub.stage.name) / key
        same = next((lb for lb, j in planned.items() if j.out == out), None) if inherited else None
        if same is not None:             # an upstream variant (inherited sections) that is one job after all
            aliases[label] = same
            return same
        sub.paths.output_dir = str(out)
        planned[label] = Job(label, sub, key, out, list(needs.values()))
        return label

    seeds = list(cfg.pipeline.get("seeds") or [])
    for row in rows:
        why = unmet_requirement(cfg, row)
        if why:
            skipped[row] = why
            continue
        if seeds and jobs[row].get("per_seed") and row in jobs:
            for seed in seeds:           # repeated with other seeds; what it needs only if per_seed too
                add(row, seed=int(seed))
        else:
            add(row)
    return planned, skipped


def unmet_requirement(cfg: DictConfig, name: str) -> str | None:
    """Why job ``name`` (or one it needs) cannot run on this dataset, or None (also for an unknown job:
    :func:`plan` names those). Optional upstreams (``watch``) do not count."""
    if name not in cfg.pipeline.jobs:
        return None
    job = cfg.pipeline.jobs[name]
    for entry in job.get("requires") or []:
        if cfg.dataset.get(entry) is None:
            return f"needs dataset.{entry}, which dataset={cfg.dataset.name} does not have"
    for upstream in (job.get("needs") or {}).values():
        why = unmet_requirement(cfg, upstream)
        if why:
            return why
    return None


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
    # the stage file as written: its builders' nodes name whole sections (``dataset: ${dataset}``), which are
    # hashed where they live (minus what the ignore lists drop), not a second time inside the stage
    tree["stage"] = OmegaConf.to_container(probe.stage, resolve=False)
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


def plan_text(planned: dict[str, Job]) -> str:
    """One line per job: name, stage, run folder, what it waits for."""
    lines = []
    for name, job in planned.items():
        waits = ", ".join(job.needs) if job.needs else "nothing"
        lines.append(f"{name:<22} stage={job.stage:<10} {job.out}  waits for: {waits}")
    return "\n".join(lines)
