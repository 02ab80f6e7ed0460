"""The run's loggers: CSV history kept across resumes; W&B runs that carry the whole run.

:func:`make_loggers` builds ``cfg.logger``'s loggers for a Trainer. A W&B logger gets, as its W&B config,
the run's whole resolved config (dataset, trainer, data, every setting) and ``run``: the run's record
(``run_info.json``: git revision, library versions, seed, effective batch), with the model's own
hyper-parameters under ``module`` (:class:`WandbLogger`), so that runs compare by any setting.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it finds one, so ``resume=auto``
used to leave only the rows logged after the resume. :class:`ResumableCSVLogger` keeps
the earlier rows instead: at its first write it drops only the rows whose step is at or
after the first step it is about to write (those belong to the interrupted attempt and
are logged again), keeps the rest, and appends. A fresh run (first step 0) therefore
still starts a fresh file.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only


def _step(row: dict) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class AppendingExperimentWriter(ExperimentWriter):
    """An ``ExperimentWriter`` that continues an existing ``metrics.csv`` (see the module docstring)."""

    def _check_log_dir_exists(self) -> None:  # Lightning's version deletes metrics.csv
        pass

    def save(self) -> None:
        try:
            if self.metrics and not getattr(self, "_merged", False):
                self._merged = True
                self._merge_existing(min(_step(m) for m in self.metrics))
            super().save()
        except OSError as e:              # a full disk: one line naming the file (dasslab.utils.io.write_fault)
            from dasslab.utils.io import write_fault

            raise write_fault(self.metrics_file_path, e, "the rows written before are kept") from None

    def _merge_existing(self, first_step: float) -> None:
        """Keep the rows of ``metrics.csv`` logged before ``first_step`` (with their columns)."""
        path = self.metrics_file_path
        if not self._fs.isfile(path):
            return
        with self._fs.open(path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if _step(r) < first_step]
        if not rows:
            self._fs.rm_file(path)
            return
        for key in fields:
            if key not in self.metrics_keys:
                self.metrics_keys.append(key)
        self.metrics_keys.sort()
        tmp = f"{path}.tmp"
        with self._fs.open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the rows of earlier attempts of the same run (resume)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` whose model hyper-parameters go under ``module`` in the W&B config, beside
    (not over) the run's config that :func:`make_loggers` hands it."""

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        from lightning.fabric.utilities.logger import (
            _convert_json_serializable,
            _convert_params,
            _sanitize_callable_params,
        )

        params = _convert_json_serializable(_sanitize_callable_params(_convert_params(params)))
        self.experiment.config.update({"module": params}, allow_val_change=True)


def run_record(out: str | Path | None) -> dict:
    """``run_info.json`` of run folder ``out`` without its file lists (git revision, versions, seed, batch …),
    or the code's git revision and versions where the run has none yet."""
    from dasslab.utils.runinfo import git_revision, library_versions

    path = Path(out) / "run_info.json" if out is not None else None
    if path is not None and path.is_file():
        try:
            info = json.loads(path.read_text())
            info.pop("inputs", None)
            return info
        except (OSError, ValueError):
            pass
    return {"git_revision": git_revision(), "versions": library_versions()}


def run_config(cfg, out: str | Path | None = None) -> dict:
    """What a W&B run of ``cfg`` records as its config: the resolved config and ``run`` (:func:`run_record`)."""
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True)
    tree.pop("hydra", None)
    return {**tree, "run": run_record(out)}


def make_loggers(cfg, out: str | Path | None = None) -> list:
    """``cfg.logger``'s loggers; a W&B one with :func:`run_config` as its config (``out``: the run folder)."""
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        target = str(node.get("_target_", ""))
        if target.endswith("WandbLogger"):
            kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not k.startswith("_")}
            loggers.append(get_class(target)(**kwargs, config=run_config(cfg, out)))
        else:
            loggers.append(instantiate(node))
    return loggers
