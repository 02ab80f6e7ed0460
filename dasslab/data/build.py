"""Datasets from config entries: ``build_dataset(dataset_cfg, key, train)`` with the right transform.

Evaluation keeps labels at their stored resolution (predictions are upsampled to it),
as Cityscapes results are reported; images are resized to the working size.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from dasslab.data.base import DataError
from dasslab.data.transforms import build_transform


class ResizeImageOnly:
    """Resize the image to the working size; leave the label at its own resolution."""

    def __init__(self, size: Sequence[int]):
        self.resize = A.Resize(int(size[0]), int(size[1]))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": self.resize(image=image)["image"], "mask": mask}


def eval_collate(items: list[dict]) -> dict:
    """Stack images; stack labels when they share a size, else keep them as a list."""
    labels = [it["label"] for it in items]
    same = all(lab.shape == labels[0].shape for lab in labels)
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.stack(labels) if same else labels,
        "name": [it["name"] for it in items],
    }


def limited(ds: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` samples of ``ds`` (all when None), keeping its class names."""
    if not limit or limit >= len(ds):
        return ds
    sub = Subset(ds, range(int(limit)))
    sub.class_names, sub.num_classes = ds.class_names, ds.num_classes
    sub.samples = ds.samples[: int(limit)]
    return sub


def root_setting(dataset_cfg: DictConfig, key: str) -> str | None:
    """The setting that holds ``dataset.<key>``'s folder as the user gives it: the key its ``root`` refers to
    (``${dataset.root}`` of a folder pair: ``dataset.root``; a val split's ``${dataset.target.root}``), else
    ``dataset.<key>.root``; None when the entry has no ``root``."""
    import re

    entry = dataset_cfg.get(key)
    node = entry._get_node("root") if isinstance(entry, DictConfig) else None
    if node is None:
        return None
    raw = node._value()
    m = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return m.group(1) if m else f"dataset.{key}.root"


def _accepts(target, name: str) -> bool:
    import inspect

    from hydra.utils import get_object

    try:
        return name in inspect.signature(get_object(str(target))).parameters
    except Exception:  # noqa: BLE001 - not importable here: instantiate says so
        return False


def build_dataset(dataset_cfg: DictConfig, key: str, train: bool, limit: int | None = None,
                  resize_labels: bool = False) -> Dataset:
    """Instantiate ``dataset.<key>`` with the train or eval transform (first ``limit`` samples).

    Evaluation keeps labels at their stored size unless ``resize_labels`` (then both image
    and label are resized to the working size, e.g. to translate a labeled set)."""
    entry = dataset_cfg.get(key)
    if entry is None:
        raise DataError(f"dataset.{key}: not set for dataset={dataset_cfg.get('name')}; "
                        f"this stage needs it (set dataset.{key}._target_ and its root)")
    if train:
        transform = build_transform(True, resize=dataset_cfg.image_size, crop=dataset_cfg.crop_size,
                                    hflip=bool(dataset_cfg.get("hflip", True)))
    elif resize_labels:
        transform = build_transform(False, resize=dataset_cfg.image_size)
    else:
        transform = ResizeImageOnly(dataset_cfg.image_size)
    extra = {}
    setting = root_setting(dataset_cfg, key)
    if setting and "setting" not in entry and _accepts(entry.get("_target_"), "setting"):
        extra["setting"] = setting          # errors name the key the user sets (dataset.root of a folder pair)
    try:
        ds = instantiate(entry, transform=transform, **extra)
    except InstantiationException as e:  # surface our own one-line data errors unwrapped
        cause = e.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
    return limited(ds, limit)
