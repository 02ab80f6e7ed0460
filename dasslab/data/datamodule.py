"""Paired source/target loaders for every stage (a LightningDataModule).

A stage names the dataset entries it trains on (``train_domains``), e.g. ``source``
for the source-only model, ``target_train_labeled`` for the target oracle,
``target`` for the diffusion model, ``source`` + ``translated`` for adaptation.
Training batches are dicts keyed by those names (one loader per entry, cycled to
the longest with Lightning's ``CombinedLoader``); validation runs on the labeled
target val split.

Before training, ``setup`` pre-scans every file of every split it will read
(:mod:`dasslab.data.prescan`, ``data.prescan=full|headers|off``): a corrupt or mislabeled
file fails with one line before the first step, not when a loader reaches it.

Reproducibility: a loader's order comes from a generator seeded with the run seed,
and every augmentation pipeline is seeded too (in the main process from the run seed
and the rank, in each worker from the worker's seed: :func:`seed_worker`). All training
loaders share the seed, so equally long sets (source and its translation) are drawn in
the same order.

Evaluation keeps labels at their stored resolution (predictions are upsampled to
it), as Cityscapes results are reported; images are resized to the working size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from dasslab.data.base import DataError
from dasslab.data.build import ResizeImageOnly, build_dataset, eval_collate, limited  # noqa: F401  (re-exported)
from dasslab.data.transforms import derive_seed, process_rank, seed_transforms, seed_worker

log = logging.getLogger(__name__)


class DASSDataModule(L.LightningDataModule):
    """Training loaders for ``train_domains`` (+ any ready-made ``extra`` datasets) and target val."""

    def __init__(self, dataset: DictConfig, batch_size: int, num_workers: int = 2,
                 train_domains: Sequence[str] = ("source",), extra: Mapping[str, Dataset] | None = None,
                 val_split: str | None = "target_val", val_batch_size: int | None = None,
                 seed: int = 0, limit_train: int | None = None, limit_val: int | None = None,
                 prescan: str = "full", report_split: str | None = None, max_pixels: int | None = None) -> None:
        super().__init__()
        from dasslab.data.formats import set_max_pixels

        set_max_pixels(max_pixels)       # the pixel cap of this process and its loader workers (data.max_pixels)
        self.cfg = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.train_domains = list(train_domains)
        self.extra = dict(extra or {})
        self.val_split = val_split
        self.val_batch_size = int(val_batch_size or batch_size)
        self.seed = seed
        self.limit_train, self.limit_val = limit_train, limit_val
        self.prescan = prescan
        self.prescan_report = None
        self.train_sets: dict[str, Dataset] = {}
        self.val_set: Dataset | None = None
        # the held-apart split a stage's numbers are reported on (eval.report_split; where the dataset has it)
        self.report_split = report_split if report_split and dataset.get(report_split) is not None else None
        self.report_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if not self.train_sets:
            self.train_sets = {k: build_dataset(self.cfg, k, train=True, limit=self.limit_train)
                               for k in self.train_domains}
            self.train_sets.update(self.extra)
            for ds in self.train_sets.values():
                seed_transforms(ds, derive_seed(self.seed, process_rank()))
        if self.val_split and self.val_set is None:
            self.val_set = build_dataset(self.cfg, self.val_split, train=False, limit=self.limit_val)
        if self.report_split and self.report_set is None and self.report_split != self.val_split:
            self.report_set = build_dataset(self.cfg, self.report_split, train=False, limit=self.limit_val)
        self._check_classes()
        if self.prescan_report is None:
            self.prescan_report = self._prescan()

    def _prescan(self):
        """Every file of every split this datamodule will read, checked before training (``data.prescan``)."""
        from dasslab.data.prescan import scan_datasets

        report = scan_datasets(self._all_sets(), self.prescan)
        if report.splits:
            log.info(report.summary())
        return report

    def _all_sets(self) -> dict[str, Dataset]:
        """Every split this datamodule reads: the training sets, the val split, the report split."""
        sets = dict(self.train_sets)
        for key, ds in ((self.val_split, self.val_set), (self.report_split, self.report_set)):
            if ds is not None:
                sets[key] = ds
        return sets

    def _check_classes(self) -> None:
        expected = self.cfg.get("num_classes")
        for key, ds in self._all_sets().items():
            k = getattr(ds, "num_classes", None)
            if expected is not None and k is not None and k != expected:
                raise DataError(f"dataset.{key}: {k} classes but dataset.num_classes={expected}")

    @property
    def class_names(self) -> list[str]:
        ds = self.val_set if self.val_set is not None else next(iter(self.train_sets.values()))
        return list(ds.class_names)

    def _loader(self, ds: Dataset, shuffle: bool, batch_size: int, **kw) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle and len(ds) >= batch_size, generator=g, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
                          **kw)

    def train_dataloader(self) -> CombinedLoader:
        loaders = {k: self._loader(ds, True, self.batch_size) for k, ds in self.train_sets.items()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, False, self.val_batch_size, collate_fn=eval_collate)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def report_dataloader(self) -> DataLoader:
        """The loader of ``report_split`` (the held-apart test split), for the final evaluation only."""
        if self.report_set is None:
            raise DataError(f"eval.report_split={self.report_split}: not loaded (dataset.{self.report_split} unset)")
        return self._loader(self.report_set, False, self.val_batch_size, collate_fn=eval_collate)


def build(dataset: DictConfig, data: DictConfig, eval: DictConfig, seed: int, train_domains: Sequence[str],
          batch_size: int, val: bool = True, extra: Mapping[str, Dataset] | None = None) -> DASSDataModule:
    """The datamodule a stage trains on, from the sections its stage file hands it (``conf/stage/*.yaml``):
    ``dataset``, ``data`` (workers, limits, prescan), ``eval`` (the validation split and batch), ``seed``."""
    return DASSDataModule(dataset, batch_size=batch_size, num_workers=data.num_workers,
                          train_domains=list(train_domains), extra=extra,
                          val_split=eval.split if val else None, val_batch_size=eval.batch_size,
                          seed=seed, limit_train=data.get("limit_train"),
                          limit_val=data.get("limit_val"), prescan=data.get("prescan") or "full",
                          report_split=eval.get("report_split") if val else None, max_pixels=data.get("max_pixels"))
