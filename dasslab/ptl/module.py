"""The adaptation module (Sec. 4.3-4.4): one PTL iteration, top to bottom.

Per step s: :meth:`PTLModule.enter_domain` (Lightning's ``on_train_batch_start``) computes n — the only
place that does — and on entering domain n freezes the segmenter into the guide g_{n-1} (at the
domain's first step), translates the domain's pool and watches it; :meth:`PTLModule.training_step`
takes X^n (pool, on the fly, or labelled target images for ptl=ceiling), the source batch and, with
self-training, the target batch, and returns Eq. 12 (+ L_st). The pieces follow: translation,
self-training, the sampler and the guide, the optimiser's learning-rate factor.

The module is a :class:`SegmenterModule`: the segmenter lives under ``model.`` (what
:func:`dasslab.checkpoints.load_segmenter` loads from an adapt checkpoint), the guide under
``guide.``, the self-training teacher under ``teacher.``; the frozen EMA denoiser is loaded from
``diffusion_ckpt`` and is not in the checkpoint. The walk's state (guide refreshes, watched
statistics) is saved under ``checkpoint["ptl"]``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dasslab.data.transforms import derive_seed
from dasslab.errors import ConfigError
from dasslab.guidance.translation import chunk_seed, translate_batch, translate_images
from dasslab.lit.segmenter_module import SegmenterModule
from dasslab.ptl.config import PTL_KEYS, WATCH_KEYS, missing_keys, self_training_settings
from dasslab.ptl.data import TARGET, TARGET_LABELED, SourceStream
from dasslab.ptl.schedule import DomainSchedule, domain_seed, lr_factor, ptl_max_steps
from dasslab.ptl.watch import PoolWatch
from dasslab.segmentation import self_training as st
from dasslab.utils.rng import own_rng

__all__ = ["PTLModule", "build", "train_keys_for"]


class PTLModule(SegmenterModule):
    """The segmenter being adapted (``model``), its frozen guide (``guide``) and the target DDPM.

    ``ptl``: ``name`` (progressive | direct | none | ceiling), ``N``, ``K``, ``t_max``, ``pool_size``,
    ``pool_batch``, ``val_every_domains``, ``lr_schedule``, ``watch``; ``num_steps``: respacing of the
    reverse chain; ``guidance`` / ``arrangement``: the config groups; ``diffusion_ckpt``: the target
    DDPM; ``sampling``: keyword settings of the reverse chain passed to every translation
    (``{"variance": translate.variance}``); ``self_training``: ``adapt.self_training`` (the EMA
    teacher, pseudo-labels and ClassMix term; off by default); ``translation``: the settings of each
    calibrated depth (:meth:`dasslab.calibration.TranslationPlan.record`: variance and guidance shift per
    depth, used at the nearest one), where some were left to the calibration.
    """

    def __init__(self, backbone: dict, num_classes: int, class_names: Sequence[str], optim: dict,
                 max_steps: int, augment: dict | None = None, eval_subsets: dict | None = None,
                 train_keys: Sequence[str] = ("translated", "source"), schedule: dict | None = None,
                 inference: dict | None = None, ignore_index: int = 255, ptl: dict | None = None,
                 guidance: dict | None = None, arrangement: dict | str | None = None,
                 diffusion_ckpt: str | None = None, num_steps: int | None = None, seed: int = 0,
                 speed: dict | None = None, sampling: dict | None = None,
                 self_training: dict | None = None, translation: dict | None = None) -> None:
        super().__init__(backbone, num_classes, class_names, optim, max_steps, augment, eval_subsets, train_keys,
                         schedule, inference, ignore_index)
        self.save_hyperparameters()
        p = dict(ptl or {})
        missing = missing_keys(p, PTL_KEYS) or [f"watch.{k}" for k in missing_keys(p["watch"], WATCH_KEYS)]
        if missing:   # no second default: conf/ptl/progressive.yaml holds them
            raise ValueError(f"PTLModule: ptl needs {', '.join(missing)} (conf/ptl/progressive.yaml's settings)")
        self.ptl = {**p, "watch": dict(p["watch"])}
        self.guide = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.st = dict(self_training or {"enabled": False})
        if self.st["enabled"]:   # h_0 = g_0 (the EMA's alpha_0 = 0 makes it so at step 0 anyway)
            self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._diffusion = None
        self.prepared_domain: int | None = None           # the domain entered last (enter_domain)
        self.refreshed: list[tuple[int, int]] = []         # (n, step) of every guide refresh
        self.watcher = PoolWatch(self.ptl["watch"])        # what each domain trains on, scored (ptl.watch)
        self._pool: tuple[Tensor, Tensor] | None = None
        self.last_translation_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ one PTL iteration
    def on_train_start(self) -> None:
        self.enter_domain()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self.enter_domain()

    def enter_domain(self) -> int:
        """n of the current step — the one place it is computed — and, when it changes, the domain's entry:
        at its first step g_{n-1} := g (the guide; a resume mid-domain keeps the restored one), its pool
        translated, what it trains on watched (rank 0)."""
        step = self.global_step
        n = self.domains.domain(step)
        if self.prepared_domain == n:
            return n
        first = step == self.domains.start(step)
        dm = self.trainer.datamodule if self._trainer is not None else None
        stream = dm.stream(self.watch_stream) if dm is not None and self.pooled else None
        self.start_domain(n, snapshot=first, stream=stream)
        if first:
            self.refreshed.append((n, step))
        if dm is not None and self.trainer.is_global_zero and (self.translates or self.ceiling):
            self.watcher.observe(self, n, dm)
        return n

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L_ft = CE(g(X^n), Y^S) + CE(g(X^S), Y^S) (Eq. 12) [+ L_st, target self-training] at step s."""
        step, n = self.global_step, self.prepared_domain
        if self.self_training:
            self.update_teacher(step)
        parts = {"source": batch["source"]}
        if self.translates:     # X^n: from the domain's pool, or translated now
            parts["translated"] = self.translated_batch(step, batch["source"])
        elif self.ceiling:      # perfect translations: labelled target images in place of X^n (ceiling_m: its pool)
            parts["translated"] = self.pool_batch(step, batch[TARGET_LABELED]["image"].shape[0]) \
                if self._pool is not None else batch[TARGET_LABELED]
        # the Appendix C augmentation draws from the global RNG: seed it by (seed, rank, step) so a
        # resumed run draws what the uninterrupted one drew (after translating, which has its own seeds)
        torch.manual_seed(derive_seed(self.hparams.seed, self._rank()[0], step))
        total = 0.0
        for key in self.train_keys:
            if key not in parts:
                continue
            loss = self.loss_on(parts[key]["image"], parts[key]["label"])
            self.log(f"train/loss_{key}", loss, batch_size=parts[key]["image"].shape[0])
            total = total + loss
        if self.self_training:
            total = total + self.self_training_loss(parts, batch[TARGET]["image"], step)
        self.log("train/loss", total, prog_bar=True)
        self.log_dict({"ptl/n": float(n), "ptl/depth": float(self.domains.depth(n) if self.translates else 0)})
        if self.translates and self.last_translation_stats:
            self.log_dict({f"ptl/{k}": v for k, v in self.last_translation_stats.items()})
        return total

    def configure_callbacks(self):
        """The mIoU-over-n curve (``ptl.val_every_domains``) is a callback; the walk itself is above."""
        from dasslab.callbacks.ptl import MiouOverDomains

        return [MiouOverDomains(val_every_domains=int(self.ptl["val_every_domains"]))]

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ptl"] = {"refreshed": [list(r) for r in self.refreshed], "watch": self.watcher.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("ptl") or {}
        self.refreshed = [tuple(r) for r in state.get("refreshed", [])]
        self.watcher.load_state_dict(state.get("watch") or {})

    # ------------------------------------------------------------------ pieces
    @property
    def domains(self) -> DomainSchedule:
        T = int((self.hparams.schedule or {}).get("num_timesteps", 1000))
        p = self.ptl
        return DomainSchedule(p["name"], int(p["N"]), int(p["K"]), p["t_max"], T)

    @property
    def translates(self) -> bool:
        """Whether X^n comes from the diffusion model (progressive, direct)."""
        return "translated" in self.train_keys and self.ptl["name"] not in ("none", "ceiling", "ceiling_m")

    @property
    def ceiling(self) -> bool:
        """Whether X^n is replaced by labelled target-train images (ptl=ceiling, ceiling_m)."""
        return "translated" in self.train_keys and self.ptl["name"] in ("ceiling", "ceiling_m")

    @property
    def pooled(self) -> bool:
        """Whether X^n comes from a pool per domain: translations (``ptl.pool_size``) or ptl=ceiling_m's images."""
        return bool(self.ptl["pool_size"]) and (self.translates or self.ptl["name"] == "ceiling_m")

    @property
    def pool_images(self) -> int:
        """M: the distinct images of a domain's pool (``ptl.pool_size``); ptl=direct's one domain holds as many
        as the N pools of a walk (N x pool_size), so that it trains on as many distinct translations."""
        return int(self.ptl["pool_size"] or 0) * (int(self.ptl["N"]) if self.ptl["name"] == "direct" else 1)

    @property
    def watch(self) -> dict:
        """``ptl.watch``: judge_ckpt, domain_score, images, classifier_steps, classifier_images."""
        return self.ptl["watch"]

    def set_diffusion(self, diffusion) -> None:
        """Use this (frozen) DiffusionModule instead of loading ``diffusion_ckpt``."""
        self.__dict__["_diffusion"] = diffusion.eval().requires_grad_(False)
        self.__dict__.pop("_sampler", None)

    def sampler(self):
        if self._diffusion is None:
            from dasslab.checkpoints import load_diffusion

            if not self.hparams.diffusion_ckpt:
                raise ConfigError("stage=adapt: diffusion_ckpt is not set (a `dasslab-train stage=diffusion` "
                                  "checkpoint of the target domain)")
            self.set_diffusion(load_diffusion(self.hparams.diffusion_ckpt, setting="diffusion_ckpt"))
        if self._diffusion.device != self.device:
            self._diffusion.to(self.device)
            self.__dict__.pop("_sampler", None)
        if self.__dict__.get("_sampler") is None:   # one sampler per device (a compiled denoiser compiles once)
            from dasslab.diffusion.sampler import sampler_options

            self.__dict__["_sampler"] = self._diffusion.sampler(**sampler_options(self.hparams.speed, self.device))
        return self.__dict__["_sampler"]

    def train(self, mode: bool = True):
        super().train(mode)
        self.guide.eval()  # the guide (and the teacher) always run with running BN statistics
        if self.self_training:
            self.teacher.eval()
        return self

    @property
    def self_training(self) -> bool:
        """Whether the target self-training term is on (``adapt.self_training.enabled``)."""
        return bool(self.st["enabled"])

    def mix_key(self, parts: Mapping[str, dict]) -> str:
        """The labelled batch whose classes ClassMix pastes onto the target images (``self_training.mix``)."""
        mode = self.st["mix"]
        if mode == "auto":
            return "translated" if "translated" in parts else "source"
        return mode

    def update_teacher(self, step: int) -> None:
        """h_s = alpha_s h_{s-1} + (1 - alpha_s) g_s, before the step's first forward: under DDP the segmenter's
        BN statistics were just broadcast from rank 0 and its weights are equal, so every rank's teacher is."""
        st.ema_update(self.teacher, self.model, st.ema_alpha(step, self.st["ema"]))

    def self_training_loss(self, parts: Mapping[str, dict], target: Tensor, step: int) -> Tensor:
        """L_st of step ``step`` (:mod:`dasslab.segmentation.self_training`): the teacher's pseudo-labels on
        ``target``, ClassMix with ``parts[mix_key]``, the strong augmentation, the confidence-weighted CE of
        the segmenter. Its randomness is seeded by (seed, rank, step)."""
        s, ignore = self.st, self.hparams.ignore_index
        with torch.no_grad():
            pseudo, q = st.pseudo_labels(self.teacher(target), s["threshold"])
        labelled = parts[self.mix_key(parts)]
        gen = torch.Generator().manual_seed(derive_seed(self.hparams.seed, 17, self._rank()[0], step))
        mask = st.classmix_masks(labelled["label"], gen, ignore)
        image, label, weight = st.mix(labelled["image"], labelled["label"], target, pseudo, q, mask)
        image = st.strong_augment(image, gen, float(s["jitter"]), float(s["p_jitter"]), bool(s["blur"]))
        loss = st.weighted_ce(self.model(image), label, weight, ignore)
        B = target.shape[0]
        self.log_dict({"train/loss_st": loss, "st/pseudo_weight": q.mean(), "st/pasted": mask.float().mean()},
                      batch_size=B)
        return float(s["weight"]) * loss

    def snapshot_guide(self) -> None:
        """g_{n-1} := the current segmenter (frozen), at the start of domain n."""
        self.guide.load_state_dict(self.model.state_dict())

    def _rank(self) -> tuple[int, int]:
        t = self._trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    @property
    def guidance_settings(self):
        """The checked guidance settings (validated once per module, not per batch), or None if unguided."""
        if "_guidance" not in self.__dict__:
            from dasslab.guidance import validate_guidance

            g = self.hparams.guidance
            settings = validate_guidance(g, self.hparams.arrangement) if g else None
            self.__dict__["_guidance"] = settings if settings is not None and settings.enabled else None
        return self.__dict__["_guidance"]

    def depth_settings(self, depth: int) -> tuple[Any, Any]:
        """(Sigma of the reverse steps, guidance settings or None) of a translation at ``depth``: as configured, or
        the calibrated depth nearest to it for the settings left to the calibration (``translation``)."""
        guidance = self.guidance_settings
        variance = (self.hparams.get("sampling") or {}).get("variance", "beta")
        rows = (self.hparams.get("translation") or {}).get("depths") or {}
        if not rows:
            return variance, guidance
        row = rows[min(rows, key=lambda d: (abs(int(d) - int(depth)), int(d)))]
        if guidance is not None and row.get("shift") is not None:
            from dataclasses import replace

            guidance = replace(guidance, shift=float(row["shift"]))
        return row["variance"] if guidance is not None else row["variance_unguided"], guidance

    @torch.no_grad()
    def translate(self, images: Tensor, labels: Tensor, n: int, chunk: int, seed: int):
        """SGG(phi^{t_n}(images), guide) of one chunk, noise from ``chunk_seed(seed, t_n, chunk)``."""
        depth = self.domains.depth(n)
        gen = torch.Generator(device=self.device).manual_seed(chunk_seed(seed, depth, chunk))
        variance, guidance = self.depth_settings(depth)
        return translate_batch(self.sampler(), images.to(self.device), labels.to(self.device), depth,
                               self.hparams.num_steps, self.guide if guidance else None, guidance,
                               self.hparams.arrangement, gen, variance=variance)

    def start_domain(self, n: int, snapshot: bool, stream: SourceStream | None = None) -> None:
        """Enter domain n: refresh the guide (at the domain's first step) and build its pool (translations; for
        ptl=ceiling_m the domain's labelled target images)."""
        if snapshot:
            self.snapshot_guide()
        self.prepared_domain = n
        self._pool = None
        if self.translates and self.ptl["pool_size"]:
            self._pool = self.build_pool(n, stream)
        elif self.pooled and stream is not None:
            self._pool = stream.images(self.domains.start(self.global_step), self.pool_images)

    def build_pool(self, n: int, stream: SourceStream) -> tuple[Tensor, Tensor]:
        """Translate the domain's first M stream images once, in chunks of ``pool_batch`` (kept on the CPU)."""
        rank, _ = self._rank()
        M = self.pool_images
        start = self.domains.start(self.global_step)
        images, labels = stream.images(start, M)
        out, stats = self._translate_all(images, labels, n, domain_seed(self.hparams.seed, n, rank))
        self._record_stats(stats)
        return out, labels

    def _translate_all(self, images: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, list]:
        """SGG(phi^{t_n}(images), guide) in chunks of ``pool_batch`` on ``seed``: (images on the CPU, Translations)."""
        depth = self.domains.depth(n)
        variance, guidance = self.depth_settings(depth)
        out, stats = [], []
        for _, tr in translate_images(self.sampler(), images, labels, depth, self.hparams.num_steps,
                                      self.guide if guidance else None, guidance, self.hparams.arrangement,
                                      batch_size=int(self.ptl["pool_batch"]), seed=seed, device=self.device,
                                      variance=variance):
            out.append(tr.images.detach().cpu())
            stats.append(tr)
        return torch.cat(out), stats

    @torch.no_grad()
    def watch_images(self, n: int, stream: SourceStream) -> tuple[Tensor, Tensor]:
        """The first ``watch.images`` images (and labels) of what domain n trains on as X^n (``ptl.watch``).

        The domain's pool when there is one; otherwise the first ``watch.images`` stream images of the
        domain translated with its guide on a seed of their own (``derive_seed(domain seed, 13)``: no
        chunk of the training's translations shares it); for ptl=ceiling the first labelled target
        images of ``stream``. The global RNG is left as it was (:func:`own_rng`)."""
        count = int(self.watch["images"])
        start = self.domains.start(self.global_step)
        if self.ceiling and self._pool is None:
            return stream.images(start, count)
        if self._pool is not None:
            images, labels = self._pool
            return images[:count], labels[:count]
        images, labels = stream.images(start, count)
        with own_rng(self.device):
            out, _ = self._translate_all(images, labels, n,
                                         derive_seed(domain_seed(self.hparams.seed, n, self._rank()[0]), 13))
        return out, labels

    def _record_stats(self, translations) -> None:
        from dasslab.diffusion.sampler import Sampler

        steps = [s for tr in translations for s in tr.stats]
        summary = Sampler.shift_summary(steps) if steps else {}
        summary["skipped"] = float(sum(tr.skipped for tr in translations))
        self.last_translation_stats = {k: float(v) for k, v in summary.items()}

    def translated_batch(self, step: int, source: dict) -> dict:
        """X^n for ``step``: drawn from the domain's pool, or ``source`` translated on the fly."""
        n = self.domains.domain(step)
        i = step - self.domains.start(step)
        B = source["image"].shape[0]
        if self._pool is not None:
            return self.pool_batch(step, B)
        tr = self.translate(source["image"], source["label"], n, chunk=i,
                            seed=domain_seed(self.hparams.seed, n, self._rank()[0]))
        self._record_stats([tr])
        return {"image": tr.images.detach(), "label": source["label"]}

    def pool_batch(self, step: int, B: int) -> dict:
        """The ``B`` pool images of ``step``: the domain's pool cycled in order from its first step."""
        images, labels = self._pool
        i = step - self.domains.start(step)
        idx = torch.tensor([(i * B + j) % len(images) for j in range(B)])
        return {"image": images[idx].to(self.device), "label": labels[idx].to(self.device)}

    def distinct_images(self, dm) -> dict[str, int]:
        """How many distinct images each training stream gave the run (``metrics.json``'s ``distinct_images``):
        ``source`` (every step's source batch), and X^n -- ``translated`` (the pools' source images, or every
        step's when translated on the fly) or ``target_labeled`` (ptl=ceiling, ceiling_m) -- counted by dataset
        index over all ranks' shards of the steps trained (``max_steps`` before a fit)."""
        steps = self.trainer.global_step if self._trainer is not None else int(self.hparams.max_steps)
        domains = self.domains
        world = self._rank()[1]
        counts = {}

        def indices(key, step_range):
            out = set()
            for r in range(world):
                s = dm.stream(key)
                s.rank, s.world_size = r, world
                out |= {i for st in step_range for i, _ in s.keys(st)}
            return out

        counts["source"] = len(indices("source", range(steps)))
        if not (self.translates or self.ceiling):
            return counts
        key = self.watch_stream
        if self.pooled:               # each domain's pool: the stream items from its first step on
            starts = sorted({domains.start(st) for st in range(steps)})
            per = -(-self.pool_images // dm.batch_size)
            used = indices(key, [st for s0 in starts for st in range(s0, s0 + per)])
        else:
            used = indices(key, range(steps))
        counts["translated" if self.translates else TARGET_LABELED] = len(used)
        return counts

    # ------------------------------------------------------------------ Lightning
    def configure_optimizers(self):
        """The optimiser of :class:`SegmenterModule`; the lr factor of ``ptl.lr_schedule`` (:func:`lr_factor`)."""
        out = super().configure_optimizers()
        mode = self.ptl["lr_schedule"]
        if mode == "global":  # the poly decay over max_steps of SegmenterModule
            return out
        domains, max_steps = self.domains, max(int(self.hparams.max_steps), 1)
        power = float(self.hparams.optim.get("poly_power", 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(
            out["optimizer"], lambda step: lr_factor(step, domains, max_steps, power, mode))
        return {**out, "lr_scheduler": {**out["lr_scheduler"], "scheduler": sched}}

    @property
    def watch_stream(self) -> str:
        """The stream X^n comes from (its pools, the watch): the labelled target set (ceiling) or the source."""
        return TARGET_LABELED if self.ceiling else "source"


def train_keys_for(ptl: Mapping[str, Any], loss: str) -> list[str]:
    """The loss terms: ``[translated, source]`` (Eq. 12), ``[translated]`` (L_ada), ``[source]`` (ptl=none);
    for ptl=ceiling "translated" are the labelled target images."""
    if ptl.get("name") == "none":
        return ["source"]
    return ["translated", "source"] if loss == "ada_src" else ["translated"]


def translation_plan(ptl: dict, translate, guidance, arrangement, diffusion, dataset, calibrate, guide_ckpt: str,
                     diffusion_ckpt: str | None, seed: int, out_dir) -> dict | None:
    """The translation settings of an adaptation that translates, resolved
    (:class:`~dasslab.calibration.TranslationPlan`):
    the ``auto`` ones from ``translate.calibration`` (a calibrate job's file, the pipeline's way), or from a
    calibration run here into ``<out_dir>/calibration/`` when none is given. Returns the plan's record (None
    when nothing is ``auto``)."""
    from dasslab.calibration import TranslationPlan, TranslationSettings, load_calibration

    settings = TranslationSettings.of(ptl, translate, guidance, int(diffusion.num_timesteps))
    if not settings.auto_keys():
        return None
    if translate.get("calibration"):
        calibration = load_calibration(translate.calibration)
    else:
        from dasslab.calibration.calibrate import run_calibration

        if not diffusion_ckpt:
            raise ConfigError("stage=adapt: diffusion_ckpt is not set (a `dasslab-train stage=diffusion` "
                              "checkpoint of the target domain)")
        print(f"[calibrate] {', '.join(settings.auto_keys())}=auto and no translate.calibration: calibrating here "
              f"(the pipeline runs it once per pair as its calibrate job)", flush=True)
        calibration = run_calibration(dataset, calibrate, settings, guidance, arrangement, guide_ckpt, diffusion_ckpt,
                                      seed, Path(str(out_dir)) / "calibration")
    return TranslationPlan.of(settings, calibration).record()


def build(datamodule, init_ckpt: str | None, backbone, segmenter, adapt, ptl, augment, dataset, diffusion, eval,
          guidance, arrangement, diffusion_ckpt: str | None, translate, seed: int, calibrate=None,
          out_dir: str | None = None) -> PTLModule:
    """The adaptation module, initialised from the source-only model, from the sections ``conf/stage/adapt.yaml``
    hands it: ``backbone``, ``segmenter`` (the recipe) under ``adapt`` (``optim``, ``loss``, ``self_training``),
    ``ptl``, ``augment``, ``dataset`` (eval subsets), ``diffusion`` (schedule, speed settings), ``eval`` (inference),
    ``guidance`` and ``arrangement`` (SGG), ``diffusion_ckpt``, ``translate`` (respacing, variance, calibration),
    ``seed``, ``calibrate`` and ``out_dir`` (a calibration run here when settings are ``auto`` and no file is given)."""
    from dasslab.lit.build import plain, schedule_of, source_model

    if not init_ckpt:
        raise ConfigError("stage=adapt needs segmenter.init_ckpt=PATH (the source-only model to adapt)")
    names = list(datamodule.class_names)
    source = source_model(init_ckpt, names, dataset.name)
    ptl = plain(ptl)
    translation = None
    if ptl["name"] in ("progressive", "direct"):
        translation = translation_plan(ptl, translate, guidance, arrangement, diffusion, dataset, calibrate,
                                       init_ckpt, diffusion_ckpt, seed, out_dir)
        if translation is not None:
            ptl["t_max"] = translation["t_max"]
    elif ptl.get("t_max") == "auto":   # nothing is translated: no depth to choose
        ptl["t_max"] = None
    module = PTLModule(
        # the weights come from init_ckpt: never fetch ImageNet weights
        backbone={**plain(backbone), "pretrained": False, "weights": None}, num_classes=len(names),
        class_names=names, optim={**plain(segmenter), **(plain(adapt.get("optim")) or {})},
        max_steps=ptl_max_steps(ptl), augment=plain(augment), eval_subsets=plain(dataset.eval_subsets),
        train_keys=train_keys_for(ptl, adapt.loss), schedule=schedule_of(diffusion),
        inference=plain(eval.inference), ptl=ptl,
        guidance=plain(guidance), arrangement=plain(arrangement),
        diffusion_ckpt=diffusion_ckpt, num_steps=translate.get("num_steps"), seed=int(seed),
        speed={k: diffusion.get(k) for k in ("compile", "autocast", "compile_cpu", "autocast_cpu")},
        sampling={"variance": translate.variance}, self_training=self_training_settings(adapt),
        translation=translation)
    module.model.load_state_dict(source.model.state_dict())
    module.snapshot_guide()
    if module.self_training:
        module.teacher.load_state_dict(module.model.state_dict())
    return module
