"""Stages as data: :func:`run_stage` runs whatever ``conf/stage/<name>.yaml`` describes.

A stage file names what it builds and how (see ``conf/stage/``)::

    kind: fit            # datamodule + module + Lightning fit (+ evaluation on eval.split)
    datamodule: {_target_: …, <arguments>}   # called as target(**arguments)
    module:     {_target_: …, <arguments>}   # called as target(datamodule=…, **arguments)
    callbacks:  {name: {_target_: …}}        # instantiated and handed to the Trainer
    max_steps, val_every, checkpoint_every, paper_batch_size, evaluate

    kind: run            # anything else: run: {_target_: …, _partial_: true} called as fn(cfg)

Adding a stage is a config file (plus, where it needs one, a module): nothing here,
in ``train.py``, ``validate.py`` or ``pipeline.py`` changes.

Every stage writes into its run directory ``paths.output_dir``: ``.hydra/config.yaml``
(the resolved config), ``run_info.json`` (git revision, library versions, seed,
effective batch), ``checkpoints/last.ckpt``, and for segmenters ``metrics.json``
(docs/method.md §5) and prediction overlays.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning.pytorch as L
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from dasslab.checkpoints import checkpoint_trusted
from dasslab.errors import ConfigError
from dasslab.segmentation.evaluation import evaluate_segmenter
from dasslab.utils.io import atomic_write_text
from dasslab.utils.runinfo import check_effective_batch, effective_batch, save_config, write_run_info

log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def call(node: DictConfig, *args, **extra):
    """``node._target_(*args, **node's other keys, **extra)``: a builder gets its own node and nothing else.

    A key holding a config section (``dataset: ${dataset}``) arrives as that section (a DictConfig whose
    interpolations still resolve); other keys arrive as plain resolved values. The stage file is where a
    builder's inputs are listed (``conf/stage/*.yaml``), so reading one tells what the builder reads.
    Not ``hydra.utils.instantiate``: it would build the ``_target_``s inside the sections handed over (a
    dataset's splits) and wrap a builder's one-line error in its own exception.
    """
    target = node.get("_target_")
    if not target:
        raise ConfigError(f"stage: a node without _target_: {OmegaConf.to_yaml(node).strip()}")
    try:
        fn = get_object(target)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"stage: _target_={target} cannot be imported ({e})") from None
    kwargs = {}
    for key in node:
        if str(key).startswith("_"):
            continue
        value = node[key]
        kwargs[str(key)] = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
    return fn(*args, **kwargs, **extra)


def build_modules(cfg: DictConfig):
    """The datamodule (set up for fitting) and the module of ``cfg.stage``, each from its own node."""
    dm = call(cfg.stage.datamodule)
    dm.setup("fit")
    return dm, call(cfg.stage.module, datamodule=dm)


def make_trainer(cfg: DictConfig, out: Path, max_steps: int, callbacks: list | None = None,
                 val_every: int | None = None, checkpoint_every: int | None = None) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` + the configured loggers and callbacks."""
    from dasslab.loggers import make_loggers

    loggers = make_loggers(cfg, out)
    cbs = []
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    for name, v in (cfg.get("callbacks") or {}).items():
        if v is None:
            continue
        target = str(v.get("_target_", ""))
        if target.endswith("ProgressBar") and kw.get("enable_progress_bar") is False:
            continue                      # progress bars off: a bar callback would be an error
        if target.endswith("LearningRateMonitor") and not loggers:
            continue                      # nothing to log the learning rate to
        if name == "checkpoint":
            every = min(int(checkpoint_every or v.every_n_train_steps), max_steps)
            v = OmegaConf.merge(v, {"dirpath": str(out / "checkpoints"), "every_n_train_steps": every})
        cb = instantiate(v)
        if hasattr(cb, "name") and name == "progress" and cfg.get("stage") is not None:
            cb.name = cb.name or str(cfg.stage.name)     # the bar reads "<stage> step 40/400"
        cbs.append(cb)
    cbs += callbacks or []
    if val_every:
        kw.update(val_check_interval=min(int(val_every), max_steps), check_val_every_n_epoch=None)
    else:
        kw.update(limit_val_batches=0)
    from dasslab.lit.checkpoint_io import AtomicCheckpointIO

    return L.Trainer(**kw, max_steps=int(max_steps), default_root_dir=str(out), logger=loggers or False,
                     callbacks=cbs, enable_checkpointing=any(isinstance(c, L.callbacks.ModelCheckpoint)
                                                             for c in cbs),
                     plugins=[AtomicCheckpointIO()])   # a write fault keeps the last checkpoint whole: one line


def _resume_path(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint ``resume=`` names, checked to load without running code (Lightning unpickles it in fit).

    A file that needs more is refused in one line (:class:`~dasslab.errors.UnsafeCheckpointError`) unless
    ``trust_checkpoint=true``. ``trainer.fit`` gets ``weights_only=not trust_checkpoint``.
    """
    from dasslab.checkpoints import checkpoint_trusted, safe_torch_load
    from dasslab.errors import UnsafeCheckpointError

    resume = cfg.get("resume")
    if resume in (None, False, "none"):
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            print(f"resume=auto: nothing to resume in {out / 'checkpoints'}; starting from step 0")
            return None
        resume = str(last)
    elif not Path(resume).is_file():
        raise ConfigError(f"resume={resume}: checkpoint not found (expected a path or 'auto')")
    try:  # mmap: the tensors stay on disk, only the pickle is read
        safe_torch_load(resume, "resume", trust=False, mmap=True)
    except UnsafeCheckpointError:
        if not checkpoint_trusted(cfg.get("trust_checkpoint")):
            raise
        log.warning("resume=%s needs full unpickling; trusted (trust_checkpoint=true)", resume)
    return str(resume)


def _inputs(cfg: DictConfig, dm) -> dict:
    """What the run reads: each dataset split's fingerprint (root, files, sizes, mtimes, classes) and the
    checkpoint files it was given (path, size, mtime) -- ``run_info.json``'s ``inputs``."""
    from dasslab.provenance import dataset_fingerprint, file_identity

    sets = dict(getattr(dm, "train_sets", None) or {})
    if getattr(dm, "val_set", None) is not None:
        sets[dm.val_split] = dm.val_set
    data = {}
    for key, ds in sets.items():
        try:
            data[key] = dataset_fingerprint(ds)
        except (AttributeError, TypeError, OSError):   # a dataset made in memory: no files to name
            continue
    files = {k: file_identity(OmegaConf.select(cfg, k), digest=False)
             for k in ("segmenter.init_ckpt", "diffusion_ckpt", "guide_ckpt", "backbone.weights", "resume")
             if OmegaConf.select(cfg, k) not in (None, "", "auto", "none")}
    return {"data": data, "files": files}


def _record_run(cfg: DictConfig, out: Path, stage: str, batch_size: int, paper_batch: int | None,
                dm=None) -> None:
    t = cfg.trainer
    eff = effective_batch(batch_size, t.devices if isinstance(t.devices, int) else 1, t.accumulate_grad_batches,
                          t.get("num_nodes", 1))
    warning = check_effective_batch(eff, paper_batch, f"stage={stage}")
    write_run_info(out, stage=stage, seed=cfg.seed, effective_batch_size=eff, paper_batch_size=paper_batch,
                   batch_size_warning=warning, inputs=_inputs(cfg, dm) if dm is not None else None)


def run_stage(cfg: DictConfig) -> dict:
    """Run ``cfg.stage``: a ``fit`` stage (build, fit, save, evaluate) or a ``run`` stage (a function)."""
    stage = cfg.stage
    if stage.kind == "run":
        return call(stage.run, cfg)
    if stage.kind != "fit":
        raise ConfigError(f"stage.kind={stage.kind!r}: expected 'fit' or 'run'")
    out = run_dir(cfg)
    save_config(cfg, out)
    L.seed_everything(cfg.seed, workers=True)
    dm, module = build_modules(cfg)
    callbacks = [instantiate(c) for c in (stage.get("callbacks") or {}).values() if c is not None]
    # a stage may leave max_steps to its module (PTL: N x K)
    max_steps = int(stage.max_steps if stage.get("max_steps") is not None else module.hparams.max_steps)
    _record_run(cfg, out, stage.name, dm.batch_size, stage.get("paper_batch_size"), dm)
    # validation during training only before the end: the final evaluation covers the last step
    val_every = stage.get("val_every")
    val_every = val_every if val_every and val_every < max_steps and stage.get("evaluate") else None
    trainer = make_trainer(cfg, out, max_steps, callbacks=callbacks, val_every=val_every,
                           checkpoint_every=stage.get("checkpoint_every"))
    resume = _resume_path(cfg, out)
    if resume is not None and not getattr(dm, "resumes_exactly", False):
        # Lightning's "dataloader is not resumable … unreliable results" on a mid-epoch resume, said in our terms
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable", category=Warning)
        log.info("resume: model, optimiser, step and schedule continue exactly; this stage's data loader restarts "
                 "the interrupted epoch in a new order (PTL's data resumes exactly)")
    trainer.fit(module, datamodule=dm, ckpt_path=resume,
                weights_only=not checkpoint_trusted(cfg.get("trust_checkpoint")))
    ckpt = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt, weights_only=False)     # the whole state: a resume continues exactly
    loss = trainer.callback_metrics.get("train/loss")
    record = {"stage": stage.name, "checkpoint": str(ckpt), "steps": trainer.global_step,
              "final_loss": None if loss is None else float(loss)}
    if not trainer.is_global_zero:
        return record
    try:
        return _finish(cfg, stage, trainer, module, dm, out, ckpt, record)
    finally:
        for lg in trainer.loggers:           # close W&B runs so that their files are complete
            if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
                lg.experiment.finish()


def _finish(cfg, stage, trainer, module, dm, out: Path, ckpt: Path, record: dict) -> dict:
    """Evaluate a segmenter stage on ``eval.split`` (metrics.json, overlays, also sent to the loggers)."""
    if stage.get("evaluate"):
        train_on = list(getattr(module, "train_keys", None) or dm.train_domains)
        extra = {"stage": stage.name, "train_on": train_on, "checkpoint": str(ckpt), "steps": trainer.global_step}
        distinct = getattr(module, "distinct_images", None)
        if callable(distinct):
            extra["distinct_images"] = distinct(dm)
        report = getattr(dm, "report_split", None)
        if report is not None:    # the held-apart split numbers are reported on (never used to choose)
            test = evaluate_segmenter(module, dm.report_dataloader(), dm.class_names, out,
                                      subsets=cfg.dataset.eval_subsets, split=report, overlays=0,
                                      print_table=False, progress=trainer.progress_bar_callback is not None,
                                      filename=f"metrics_{report}.json")
            extra["report"] = {k: test[k] for k in ("split", "miou", "subsets")}
        record = evaluate_segmenter(module, dm.val_dataloader(), dm.class_names, out,
                                    subsets=cfg.dataset.eval_subsets, split=cfg.eval.split,
                                    overlays=cfg.eval.overlays, progress=trainer.progress_bar_callback is not None,
                                    extra=extra)
        if (out / "overlays.png").is_file():
            from dasslab.data.io import read_image
            from dasslab.visualize import log_image

            log_image(trainer, "eval/overlays", read_image(out / "overlays.png"), step=trainer.global_step)
        for lg in trainer.loggers:
            if record.get("miou") is not None:
                lg.log_metrics({"eval/miou": record["miou"]}, step=trainer.global_step)
                lg.save()
    else:
        atomic_write_text(out / f"{stage.name}.json", json.dumps(record, indent=2))
    return record
