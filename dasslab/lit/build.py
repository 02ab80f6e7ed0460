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


def schedule_of(diffusion) -> dict:
    """The noise schedule (T, beta_1, beta_T) of a ``diffusion`` section: the Appendix C augmentation's."""
    return {k: diffusion[k] for k in ("num_timesteps", "beta_start", "beta_end")}


def segmenter(datamodule, backbone, segmenter, augment, dataset, diffusion, eval,
              train_keys: Sequence[str] = ("source",), init_ckpt: str | None = None) -> SegmenterModule:
    """A segmenter over ``datamodule``'s classes, from the sections its stage file hands it: ``backbone``,
    ``segmenter`` (the recipe: optimiser, steps), ``augment`` (Appendix C; ``{enabled: false}`` for the
    oracle and the judge), ``dataset`` (its eval subsets), ``diffusion`` (the augmentation's noise schedule)
    and ``eval`` (inference mode).

    ``init_ckpt``: start from this segmenter checkpoint (the source model, for adaptation).
    """
    names = datamodule.class_names
    module = SegmenterModule(
        backbone=plain(backbone), num_classes=len(names), class_names=names, optim=plain(segmenter),
        max_steps=int(segmenter.max_steps), augment=plain(augment), eval_subsets=plain(dataset.eval_subsets),
        train_keys=list(train_keys), schedule=schedule_of(diffusion),
        inference=plain(eval.inference))
    if init_ckpt:
        source = source_model(init_ckpt, names, dataset.name)
        try:
            module.model.load_state_dict(source.model.state_dict())
        except RuntimeError as e:          # another architecture: one line, not torch's list of tensors
            detail = " ".join(str(e).split("\n", 1)[-1].split())[:200]
            raise CheckpointError(f"segmenter.init_ckpt={init_ckpt}: a {source.hparams.backbone.get('name')} "
                                  f"segmenter that does not fit backbone={backbone.name} ({detail})") from None
    return module


def source_model(init_ckpt: str, names: Sequence[str], dataset: str) -> SegmenterModule:
    """The segmenter of ``segmenter.init_ckpt``, refused with one line if its classes are not ``names``."""
    source = load_segmenter(init_ckpt, setting="segmenter.init_ckpt")
    if list(source.class_names) != list(names):
        raise CheckpointError(f"segmenter.init_ckpt={init_ckpt}: its classes {source.class_names[:4]}… differ "
                              f"from dataset={dataset}'s {list(names)[:4]}…")
    return source


def diffusion(datamodule, diffusion) -> DiffusionModule:
    """The target DDPM of the ``diffusion`` section (Sec. 4.1)."""
    d = diffusion
    return DiffusionModule(preset=d.preset, image_size=list(d.image_size), num_timesteps=d.num_timesteps,
                           beta_start=d.beta_start, beta_end=d.beta_end, lr=d.lr, adam_betas=list(d.adam_betas),
                           unet_overrides=plain(d.unet) if d.get("unet") else None)
