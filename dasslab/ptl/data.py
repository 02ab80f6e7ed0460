"""PTL's training data: batches as a function of the step (resume- and DDP-exact).

:class:`SourceStream`: the batch of step s on rank r is a pure function of (seed, s, r) — indices and
augmentation seeds — so a resumed run sees the same data, and a domain's pool holds translations of
the very images its iterations train on. Besides the source set the adaptation may stream the
labelled target-train images (``ptl=ceiling``: they stand in for the translations) and the unlabeled
target-train images (``adapt.self_training``), each on a seed of its own.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from dasslab.data.datamodule import DASSDataModule
from dasslab.data.transforms import derive_seed, seed_transforms
from dasslab.errors import ConfigError
from dasslab.ptl.config import TARGET, TARGET_LABELED, self_training_settings

__all__ = ["STREAM_SALT", "TARGET", "TARGET_LABELED", "PTLDataModule", "SourceStream", "StreamLoader",
           "build_datamodule"]

STREAM_SALT = {TARGET_LABELED: 11, TARGET: 12}   # each extra stream's seed: derive_seed(seed, salt)


class _SeededItems(Dataset):
    """``ds[(index, seed)]``: item ``index`` with every augmentation pipeline seeded by ``seed``."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        seed_transforms(self.ds, seed)
        return self.ds[int(index)]


class SourceStream:
    """Source batches as a function of the step: batch(s) on ``rank`` of ``world_size``.

    Stream position p = (s * world_size + rank) * B + j (j < B) takes item ``perm_e[p mod |D|]``
    of epoch e = p // |D| (a seeded permutation per epoch), augmented with seed (seed, p): ranks
    draw disjoint shards of every epoch, and any step can be fetched again exactly.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 key: str = "source"):
        if len(dataset) == 0:
            what = "source" if key == "source" else "labelled target-train"
            raise ConfigError(f"dataset.{key}: the {what} set is empty; adaptation needs labelled {what} images")
        self.dataset, self.items = dataset, _SeededItems(dataset)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self._perms: OrderedDict[int, Tensor] = OrderedDict()

    def _perm(self, epoch: int) -> Tensor:
        perm = self._perms.get(epoch)
        if perm is None:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            perm = self._perms[epoch] = torch.randperm(len(self.dataset), generator=g)
            if len(self._perms) > 2:
                self._perms.popitem(last=False)
        return perm

    def keys(self, step: int) -> list[tuple[int, int]]:
        """(dataset index, augmentation seed) of each item of ``step``'s batch on this rank."""
        n, B = len(self.dataset), self.batch_size
        first = (int(step) * self.world_size + self.rank) * B
        out = []
        for p in range(first, first + B):
            epoch, i = divmod(p, n)
            out.append((int(self._perm(epoch)[i]), derive_seed(self.seed, 7, p)))
        return out

    def batch(self, step: int) -> dict:
        """The collated batch of ``step`` (the same the training loader yields at that step)."""
        return default_collate([self.items[k] for k in self.keys(step)])

    def images(self, first_step: int, count: int) -> tuple[Tensor, Tensor]:
        """Images and labels of the ``count`` stream items from ``first_step`` on (a domain's pool)."""
        steps = math.ceil(count / self.batch_size)
        batches = [self.batch(first_step + i) for i in range(steps)]
        return (torch.cat([b["image"] for b in batches])[:count], torch.cat([b["label"] for b in batches])[:count])


class _StepBatches:
    """Batch sampler: the keys of steps start, start + 1, … (endless)."""

    def __init__(self, stream: SourceStream, start: int) -> None:
        self.stream, self.start = stream, int(start)

    def __iter__(self):
        step = self.start
        while True:
            yield self.stream.keys(step)
            step += 1


class StreamLoader:
    """The training iterable: ``{"source": batch, **{key: batch}}`` for each step from the trainer's
    current step on (``extra``: further step-indexed streams, e.g. ptl=ceiling's labelled target set).

    Not a DataLoader on purpose: Lightning leaves it as it is (no sampler injection); the stream
    already shards by rank. The start step is read when iteration begins (after a resume)."""

    def __init__(self, stream: SourceStream, start: Callable[[], int], num_workers: int = 0,
                 extra: Mapping[str, SourceStream] | None = None) -> None:
        self.stream, self.start, self.num_workers = stream, start, int(num_workers)
        self.extra = dict(extra or {})

    def __iter__(self):
        start = self.start()
        streams = {"source": self.stream, **self.extra}
        loaders = [DataLoader(s.items, batch_sampler=_StepBatches(s, start), num_workers=self.num_workers,
                              pin_memory=torch.cuda.is_available()) for s in streams.values()]
        for batches in zip(*loaders):
            yield dict(zip(streams, batches))


class PTLDataModule(DASSDataModule):
    """The source set as a :class:`SourceStream` (training) and the target val split; with
    ``target_train_labeled`` among ``train_domains`` (ptl=ceiling) a second stream of that set, on the
    seed ``derive_seed(seed, 11)``; with ``target`` (self-training) one of the unlabeled target-train
    images, on ``derive_seed(seed, 12)``."""

    resumes_exactly = True     # a resume draws the very batches of the uninterrupted run (from the global step)

    def stream(self, key: str = "source") -> SourceStream:
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        seed = self.seed if key == "source" else derive_seed(self.seed, STREAM_SALT[key])
        return SourceStream(self.train_sets[key], self.batch_size, seed, rank, world, key=key)

    def train_dataloader(self) -> StreamLoader:
        t = self.trainer
        extra = {k: self.stream(k) for k in self.train_sets if k != "source"}
        return StreamLoader(self.stream(), lambda: t.global_step if t is not None else 0, self.num_workers, extra)


def build_datamodule(dataset, data, eval, seed: int, batch_size: int, ptl, adapt) -> PTLDataModule:
    """The adaptation datamodule (``conf/stage/adapt.yaml``): source stream (+ the labelled target-train
    stream for ptl=ceiling, + the unlabeled target-train stream for self-training) + target val."""
    domains = ["source"] + ([TARGET_LABELED] if ptl.get("name") in ("ceiling", "ceiling_m") else [])
    if self_training_settings(adapt)["enabled"]:
        domains.append(TARGET)
    return PTLDataModule(dataset, batch_size=int(batch_size), num_workers=data.num_workers, train_domains=domains,
                         val_split=eval.split, val_batch_size=eval.batch_size, seed=seed,
                         limit_train=data.get("limit_train"), limit_val=data.get("limit_val"),
                         report_split=eval.get("report_split"))
