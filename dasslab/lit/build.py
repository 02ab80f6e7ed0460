"""Builders that stage configs name (``module: {_target_: dasslab.lit.build.…}``): cfg -> LightningModule."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import OmegaConf

from dasslab.checkpoints import load_segmenter
from dasslab.errors import CheckpointError
from dasslab.lit.diffusion_module import DiffusionModule
from dasslab.lit.segmenter_module import SegmenterModule


def plain(node):
    """A config node as plain Python containers (resolved); None stays None."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def segmenter(cfg, datamodule, train_keys: Sequence[str] = ("source",), init_ckpt: str | None = None,
              augment: dict | None = None) -> SegmenterModule:
    """A segmenter for ``cfg`` (backbone, segmenter recipe, augmentation) over ``datamodule``'s classes.

    ``init_ckpt``: start from this segmenter checkpoint (the source model, for adaptation).
    ``augment``: overrides ``cfg.augment`` (e.g. ``{enabled: false}`` for the oracle and the judge).
    """
    names = datamodule.class_names
    seg = cfg.segmenter
    module = SegmenterModule(
        backbone=plain(cfg.backbone), num_classes=len(names), class_names=names, optim=plain(seg),
        max_steps=int(seg.max_steps), augment=dict(augment) if augment is not None else plain(cfg.augment),
        eval_subsets=plain(cfg.dataset.eval_subsets), train_keys=list(train_keys),
        schedule={k: cfg.diffusion[k] for k in ("num_timesteps", "beta_start", "beta_end")},
        inference=plain(cfg.eval.get("inference")) or {"mode": "whole"})
    if init_ckpt:
        source = source_model(init_ckpt, names, cfg.dataset.name)
        try:
            module.model.load_state_dict(source.model.state_dict())
        except RuntimeError as e:          # another architecture: one line, not torch's list of tensors
            detail = " ".join(str(e).split("\n", 1)[-1].split())[:200]
            raise CheckpointError(f"segmenter.init_ckpt={init_ckpt}: a {source.hparams.backbone.get('name')} "
                                  f"segmenter that does not fit backbone={cfg.backbone.name} ({detail})") from None
    return module


def source_model(init_ckpt: str, names: Sequence[str], dataset: str) -> SegmenterModule:
    """The segmenter of ``segmenter.init_ckpt``, refused with one line if its classes are not ``names``."""
    source = load_segmenter(init_ckpt, setting="segmenter.init_ckpt")
    if list(source.class_names) != list(names):
        raise CheckpointError(f"segmenter.init_ckpt={init_ckpt}: its classes {source.class_names[:4]}… differ "
                              f"from dataset={dataset}'s {list(names)[:4]}…")
    return source


def diffusion(cfg, datamodule=None) -> DiffusionModule:
    """The target DDPM of ``cfg.diffusion`` (Sec. 4.1)."""
    d = cfg.diffusion
    return DiffusionModule(preset=d.preset, image_size=list(d.image_size), num_timesteps=d.num_timesteps,
                           beta_start=d.beta_start, beta_end=d.beta_end, lr=d.lr, adam_betas=list(d.adam_betas),
                           unet_overrides=plain(d.unet) if d.get("unet") else None)
