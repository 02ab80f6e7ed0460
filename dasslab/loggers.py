"""Loggers that keep a run's history across resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it finds one, so ``resume=auto``
used to leave only the rows logged after the resume. :class:`ResumableCSVLogger` keeps
the earlier rows instead: at its first write it drops only the rows whose step is at or
after the first step it is about to write (those belong to the interrupted attempt and
are logged again), keeps the rest, and appends. A fresh run (first step 0) therefore
still starts a fresh file.
"""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


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
        if self.metrics and not getattr(self, "_merged", False):
            self._merged = True
            self._merge_existing(min(_step(m) for m in self.metrics))
        super().save()

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
