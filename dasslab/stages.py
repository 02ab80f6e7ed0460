"""The stages a run is made of, each from a resolved Hydra config.

* :func:`train_segmenter` — source-only model, target oracle, or adaptation fine-tuning;
* :func:`train_diffusion` — the target DDPM (Sec. 4.1);
* :func:`adapt_baseline`  — Table 2 (a): translate the source set once at n = N, then
  fine-tune on translated + source (Eq. 12) or translated only (Table 3 (a)).

Every stage writes into its run directory: ``.hydra/config.yaml`` (the resolved config),
``run_info.json`` (git revision, library versions, seed, effective batch), checkpoints,
and for segmenters ``metrics.json`` (DESIGN §4) and prediction overlays.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dasslab.data.datamodule import DASSDataModule
from dasslab.evaluate import evaluate_segmenter
from dasslab.lit.diffusion_module import DiffusionModule
from dasslab.lit.segmenter_module import SegmenterModule
from dasslab.utils.io import atomic_write_text
from dasslab.utils.runinfo import check_effective_batch, effective_batch, write_run_info

log = logging.getLogger(__name__)

# stage -> the dataset entries its segmenter trains on
TRAIN_ON = {"source": ["source"], "oracle": ["target_train_labeled"]}


def run_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_config(cfg: DictConfig, out: Path) -> None:
    """The resolved config in ``out/.hydra/config.yaml`` (Hydra writes it for the top run)."""
    path = out / ".hydra" / "config.yaml"
    if not path.exists():
        atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def make_trainer(cfg: DictConfig, out: Path, max_steps: int, callbacks: list | None = None,
                 val_every: int | None = None, checkpoint_every: int | None = None) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` + the configured loggers and callbacks."""
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if v is not None]
    cbs = []
    for name, v in (cfg.get("callbacks") or {}).items():
        if v is None:
            continue
        if name == "checkpoint":
            every = min(int(checkpoint_every or v.every_n_train_steps), max_steps)
            v = OmegaConf.merge(v, {"dirpath": str(out / "checkpoints"), "every_n_train_steps": every})
        cbs.append(instantiate(v))
    cbs += callbacks or []
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    if val_every:
        kw.update(val_check_interval=min(int(val_every), max_steps), check_val_every_n_epoch=None)
    else:
        kw.update(limit_val_batches=0)
    return L.Trainer(**kw, max_steps=int(max_steps), default_root_dir=str(out), logger=loggers or False,
                     callbacks=cbs, enable_checkpointing=any(isinstance(c, L.callbacks.ModelCheckpoint)
                                                             for c in cbs))


def _resume_path(cfg: DictConfig, out: Path) -> str | None:
    resume = cfg.get("resume")
    if resume in (None, False, "none"):
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: checkpoint not found")
    return str(resume)


def _record_run(cfg: DictConfig, out: Path, stage: str, batch_size: int, paper_batch: int | None) -> None:
    t = cfg.trainer
    eff = effective_batch(batch_size, t.devices if isinstance(t.devices, int) else 1, t.accumulate_grad_batches,
                          t.get("num_nodes", 1))
    warning = check_effective_batch(eff, paper_batch, f"stage={stage}")
    write_run_info(out, stage=stage, seed=cfg.seed, effective_batch_size=eff, paper_batch_size=paper_batch,
                   batch_size_warning=warning)


def load_segmenter(path: str | Path, map_location="cpu") -> SegmenterModule:
    """A trained segmenter (``stage=source|oracle|adapt`` checkpoint) ready for inference."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"segmenter checkpoint {path}: file not found; expected …/checkpoints/last.ckpt "
                                f"of a `dasslab-train stage=source` run")
    ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    hp = dict(ckpt.get("hyper_parameters", {}))
    if "backbone" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a segmenter checkpoint (no backbone hyper-parameters or state_dict)")
    # the checkpoint holds all weights: build without fetching ImageNet weights or reading local files
    hp["backbone"] = {**hp["backbone"], "pretrained": False, "weights": None}
    module = SegmenterModule(**hp)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def train_segmenter(cfg: DictConfig, stage: str, train_keys: list[str] | None = None,
                    extra: dict | None = None, init_ckpt: str | None = None) -> dict:
    """Train a segmenter on ``train_keys`` and evaluate it on the target val split."""
    out = run_dir(cfg)
    save_config(cfg, out)
    L.seed_everything(cfg.seed, workers=True)
    keys = train_keys or TRAIN_ON[stage]
    extra = extra or {}
    seg = cfg.segmenter
    dm = DASSDataModule(cfg.dataset, batch_size=seg.batch_size, num_workers=cfg.data.num_workers,
                        train_domains=[k for k in keys if k not in extra], extra=extra,
                        val_split=cfg.eval.split, val_batch_size=cfg.eval.batch_size, seed=cfg.seed,
                        limit_train=cfg.data.get("limit_train"), limit_val=cfg.data.get("limit_val"))
    dm.setup("fit")
    names = dm.class_names
    module = SegmenterModule(
        backbone=OmegaConf.to_container(cfg.backbone, resolve=True), num_classes=len(names), class_names=names,
        optim=OmegaConf.to_container(seg, resolve=True), max_steps=seg.max_steps,
        augment=OmegaConf.to_container(cfg.augment, resolve=True),
        eval_subsets=OmegaConf.to_container(cfg.dataset.eval_subsets, resolve=True), train_keys=keys,
        schedule={k: cfg.diffusion[k] for k in ("num_timesteps", "beta_start", "beta_end")},
        inference=OmegaConf.to_container(cfg.eval.get("inference") or {"mode": "whole"}, resolve=True))
    init_ckpt = init_ckpt or seg.get("init_ckpt")
    if init_ckpt:
        module.model.load_state_dict(load_segmenter(init_ckpt).model.state_dict())
    _record_run(cfg, out, stage, seg.batch_size, seg.get("paper_batch_size"))
    # validation during training only before the end: the final evaluation below covers the last step
    val_every = seg.val_every if seg.val_every and seg.val_every < seg.max_steps else None
    trainer = make_trainer(cfg, out, seg.max_steps, val_every=val_every)
    trainer.fit(module, datamodule=dm, ckpt_path=_resume_path(cfg, out))
    ckpt = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    if not trainer.is_global_zero:
        return {}
    record = evaluate_segmenter(module, dm.val_dataloader(), names, out,
                                subsets=cfg.dataset.eval_subsets, split=cfg.eval.split,
                                overlays=cfg.eval.overlays, extra={"stage": stage, "train_on": keys,
                                                                    "checkpoint": str(ckpt),
                                                                    "steps": trainer.global_step})
    return record


def train_diffusion(cfg: DictConfig) -> Path:
    """Train the target DDPM on unlabeled target images; returns the checkpoint path."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from dasslab.callbacks.images import DiffusionSampleGrid

    out = run_dir(cfg)
    save_config(cfg, out)
    L.seed_everything(cfg.seed, workers=True)
    d = cfg.diffusion
    dm = DASSDataModule(cfg.dataset, batch_size=d.batch_size, num_workers=cfg.data.num_workers,
                        train_domains=["target"], val_split=None, seed=cfg.seed,
                        limit_train=cfg.data.get("limit_train"))
    dm.setup("fit")
    module = DiffusionModule(preset=d.preset, image_size=list(d.image_size), num_timesteps=d.num_timesteps,
                             beta_start=d.beta_start, beta_end=d.beta_end, lr=d.lr, adam_betas=list(d.adam_betas),
                             unet_overrides=OmegaConf.to_container(d.unet, resolve=True) if d.get("unet") else None)
    _record_run(cfg, out, "diffusion", d.batch_size, 4)
    callbacks = [EMAWeightAveraging(decay=d.ema_decay),
                 DiffusionSampleGrid(str(out / "samples"), every_n_steps=d.sample_every, num_steps=d.sample_steps,
                                     seed=cfg.seed)]
    trainer = make_trainer(cfg, out, d.max_steps, callbacks=callbacks, checkpoint_every=d.checkpoint_every)
    trainer.fit(module, datamodule=dm, ckpt_path=_resume_path(cfg, out))
    ckpt = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    atomic_write_text(out / "diffusion.json", json.dumps({"checkpoint": str(ckpt), "steps": trainer.global_step,
                                                          "final_loss": _last(trainer, "train/loss")}, indent=2))
    return ckpt


def _last(trainer: L.Trainer, key: str):
    v = trainer.callback_metrics.get(key)
    return None if v is None else float(v)


def adapt_baseline(cfg: DictConfig, source_ckpt: str | None = None, diffusion_ckpt: str | None = None) -> dict:
    """Table 2 (a): translate the source set at n = N with phi^N, then fine-tune the source model."""
    from dasslab.data.folder import FolderDomain
    from dasslab.data.transforms import build_transform
    from dasslab.translate import depth_dir, export_translations

    out = run_dir(cfg)
    source_ckpt = source_ckpt or cfg.segmenter.init_ckpt
    if not source_ckpt:
        raise ValueError("stage=adapt needs segmenter.init_ckpt=PATH (the source-only model to fine-tune)")
    translated = cfg.adapt.get("translated_dir")
    if not translated:
        depth = int(cfg.ptl.N)
        tcfg = OmegaConf.merge(cfg, {"translate": {"depths": [depth], "split": "source",
                                                   "out_dir": str(out / "translated"),
                                                   "diffusion_ckpt": diffusion_ckpt or cfg.translate.diffusion_ckpt}})
        export_translations(tcfg)
        translated = depth_dir(out / "translated", depth)
    tf = build_transform(True, resize=cfg.dataset.image_size, crop=cfg.dataset.crop_size,
                         hflip=bool(cfg.dataset.get("hflip", True)))
    extra = {"translated": FolderDomain(translated, "source", transform=tf, setting="adapt.translated_dir")}
    keys = ["translated", "source"] if cfg.adapt.loss == "ada_src" else ["translated"]  # validated in validate.py
    return train_segmenter(cfg, "adapt", train_keys=keys, extra=extra, init_ckpt=source_ckpt)


