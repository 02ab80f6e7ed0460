"""Progressive Translation Learning (Sec. 4.3-4.4): the adaptation module and its data.

The segmenter g starts from the source-only model g_0 (``segmenter.init_ckpt``). For domain
n = 1 … N (``ptl=progressive``) the guide g_{n-1} is a frozen snapshot of the segmenter taken at
the domain's first step (:class:`dasslab.callbacks.ptl.ProgressiveTranslation` takes it), the
source images are translated as

    X^n = SGG(phi^{t_n}(X^S), g_{n-1})                                        (Eq. 11)

and the segmenter is fine-tuned for K iterations on

    L_ft = CE(g(X^n), Y^S) + CE(g(X^S), Y^S)                                  (Eq. 12)

(``adapt.loss=ada``: the first term alone, Table 3 (a)). n = 1 + step // K, capped at N, is a
function of the global step, so DDP ranks agree and a resume continues exactly.

``ptl=direct`` is a single domain at n = N guided by the source model (Table 2 (c); with
``guidance=none`` the phi^N baseline of Table 2 (a)); ``ptl=none`` translates nothing (the segmenter
keeps training on the source set: a control for the extra iterations); ``ptl=ceiling`` is Eq. 12
with X^n replaced by *labelled target-train images* (``dataset.target_train_labeled``, drawn from a
second step-indexed stream): perfect translations with the same optimiser, iterations, batch,
augmentation and learning-rate schedule — the ceiling of what translation can give.

Learning rate (``ptl.lr_schedule``): ``global`` (the paper's reading, the default) decays
lr (1 - s / S)^p once over the S = N x K adaptation iterations; ``domain`` restarts the poly decay
at each domain's first step, lr (1 - (s - s_n) / K)^p (the last domain decays over what is left of
S; a single-domain run — direct, none, ceiling — is the same as ``global``); ``constant`` keeps lr.

Watching what PTL trains on (``ptl.watch``, :class:`dasslab.callbacks.ptl.ProgressiveTranslation`):
at each domain start the first ``watch.images`` images of the domain's translations (its pool, or
as many stream images translated with the domain's guide on a seed of their own) are scored —
high-frequency energy against the target's, label consistency under ``watch.judge_ckpt``, the
domain score when ``watch.domain_score`` — without touching the training's random streams.

Cost settings (docs/method.md §3): ``translate.num_steps`` respaces the reverse chain, ``ptl.t_max``
strides the domains over the timesteps (t_n = round(n t_max / N), :func:`domain_timestep`), and
``ptl.pool_size`` = M translates M source images once per domain (in batches of
``ptl.pool_batch``) from which the domain's K iterations draw; M = K x batch with
``pool_batch`` = batch gives exactly the on-the-fly translations (``pool_size: null``).

Target self-training (``adapt.self_training``, beyond the paper; DACS / DAFormer style,
:mod:`dasslab.segmentation.self_training`): with ``enabled`` the module keeps an EMA teacher of the
segmenter (``teacher.``, in the checkpoint), draws a third step-indexed stream of unlabeled
target-train images, and adds to Eq. 12 the confidence-weighted cross-entropy on ClassMix images —
half of the classes of the translated batch (``mix: translated``; ``auto`` where PTL translates) or
of the source batch (``mix: source``; ``auto`` with ptl=none|ceiling) pasted onto the target images,
labelled elsewhere by the teacher. The guide snapshot stays the paper's (the segmenter, not the teacher).

Source batches come from :class:`SourceStream`: the batch of step s on rank r is a pure function
of (seed, s, r) — indices and augmentation seeds — so a resumed run sees the same data, and a
domain's pool holds translations of the very images its iterations train on.

The module is a :class:`SegmenterModule`: the segmenter lives under ``model.`` (what
:func:`dasslab.checkpoints.load_segmenter` loads from an adapt checkpoint), the guide under
``guide.``; the frozen EMA denoiser is loaded from ``diffusion_ckpt`` and is not in the checkpoint.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from dasslab.data.datamodule import DASSDataModule
from dasslab.data.transforms import derive_seed, seed_transforms
from dasslab.diffusion.schedule import domain_timestep
from dasslab.errors import ConfigError
from dasslab.lit.segmenter_module import SegmenterModule
from dasslab.segmentation import self_training as st
from dasslab.translation import chunk_seed, translate_batch, translate_images
from dasslab.utils.rng import own_rng

__all__ = ["LR_SCHEDULES", "MODES", "TARGET_LABELED", "DomainSchedule", "PTLDataModule", "PTLModule",
           "SourceStream", "datamodule_from_config", "domain_seed", "from_config", "lr_factor", "own_rng",
           "ptl_max_steps", "self_training_settings", "validate_ptl", "validate_self_training"]

MODES = ("progressive", "direct", "none", "ceiling")
LR_SCHEDULES = ("global", "domain", "constant")
TARGET_LABELED = "target_train_labeled"   # the dataset entry (and batch key) of ptl=ceiling's images
TARGET = "target"                          # the unlabeled target-train images (and batch key) of self-training
STREAM_SALT = {TARGET_LABELED: 11, TARGET: 12}   # each extra stream's seed: derive_seed(seed, salt)
SELF_TRAINING_DEFAULTS = {"enabled": False, "ema": 0.999, "threshold": 0.968, "mix": "auto", "weight": 1.0,
                          "jitter": 0.2, "p_jitter": 0.2, "blur": True}
MIX_SOURCES = ("auto", "source", "translated")
WATCH_DEFAULTS = {"judge_ckpt": None, "domain_score": False, "images": 64, "classifier_steps": 400,
                  "classifier_images": 1000}


# --------------------------------------------------------------------------- the domain schedule
@dataclass(frozen=True)
class DomainSchedule:
    """Which domain n a global step belongs to, where that domain starts, and its depth t_n."""

    mode: str = "progressive"
    N: int = 600
    K: int = 300
    t_max: int | None = None
    T: int = 1000

    def domain(self, step: int) -> int:
        """n of ``step``: ``min(1 + step // K, N)`` (progressive), N (direct, ceiling), 0 (none)."""
        if self.mode == "progressive":
            return min(1 + int(step) // self.K, self.N)
        return self.N if self.mode in ("direct", "ceiling") else 0

    def start(self, step: int) -> int:
        """The first global step of the domain ``step`` belongs to."""
        if self.mode == "progressive":
            return (self.domain(step) - 1) * self.K
        return 0

    def span(self, step: int, max_steps: int) -> tuple[int, int]:
        """(first step, length) of the domain of ``step`` in a run of ``max_steps`` iterations: K for
        n < N; the last domain (and the single one of direct/none/ceiling) lasts to ``max_steps``."""
        start = self.start(step)
        if self.mode == "progressive" and self.domain(step) < self.N:
            return start, self.K
        return start, max(int(max_steps) - start, 1)

    def depth(self, n: int) -> int:
        """t_n: n (the paper) or round(n * t_max / N) (domain striding); 0 for n = 0."""
        return 0 if n == 0 else domain_timestep(n, self.N, self.t_max, self.T)

    @property
    def num_domains(self) -> int:
        return {"progressive": self.N, "direct": 1, "ceiling": 1}.get(self.mode, 0)


def lr_factor(step: int, domains: DomainSchedule, max_steps: int, power: float = 0.9, mode: str = "global") -> float:
    """The learning-rate factor of ``step`` (``ptl.lr_schedule``): poly (1 - i / L)^power with i = step,
    L = max_steps (``global``), i = step - s_n, L = the domain's length (``domain``), or 1 (``constant``)."""
    if mode == "constant":
        return 1.0
    if mode == "domain":
        start, length = domains.span(step, max_steps)
        i = int(step) - start
    else:
        i, length = int(step), max(int(max_steps), 1)
    return max(1.0 - min(i, length) / length, 0.0) ** float(power)


def domain_seed(seed: int, n: int, rank: int) -> int:
    """Seed of domain n's translations on ``rank`` (the chunk seeds derive from it: :func:`chunk_seed`)."""
    return chunk_seed(seed, n, rank)


def ptl_max_steps(ptl: Mapping[str, Any]) -> int:
    """Total adaptation iterations: ``ptl.max_steps``, or N * K when it is null."""
    steps = ptl.get("max_steps")
    return int(steps) if steps is not None else int(ptl["N"]) * int(ptl["K"])


# --------------------------------------------------------------------------- source batches by step
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

    def stream(self, key: str = "source") -> SourceStream:
        t = self.trainer
        rank, world = (t.global_rank, t.world_size) if t is not None else (0, 1)
        seed = self.seed if key == "source" else derive_seed(self.seed, STREAM_SALT[key])
        return SourceStream(self.train_sets[key], self.batch_size, seed, rank, world, key=key)

    def train_dataloader(self) -> StreamLoader:
        t = self.trainer
        extra = {k: self.stream(k) for k in self.train_sets if k != "source"}
        return StreamLoader(self.stream(), lambda: t.global_step if t is not None else 0, self.num_workers, extra)


def datamodule_from_config(cfg, batch_size: int | None = None) -> PTLDataModule:
    """The adaptation datamodule (``conf/stage/adapt.yaml``): source stream (+ the labelled target-train
    stream for ptl=ceiling, + the unlabeled target-train stream for self-training) + target val."""
    domains = ["source"] + ([TARGET_LABELED] if cfg.ptl.get("name") == "ceiling" else [])
    if self_training_settings(cfg)["enabled"]:
        domains.append(TARGET)
    return PTLDataModule(cfg.dataset, batch_size=int(batch_size or cfg.segmenter.batch_size),
                         num_workers=cfg.data.num_workers, train_domains=domains, val_split=cfg.eval.split,
                         val_batch_size=cfg.eval.batch_size, seed=cfg.seed,
                         limit_train=cfg.data.get("limit_train"), limit_val=cfg.data.get("limit_val"))


# --------------------------------------------------------------------------- the module
class PTLModule(SegmenterModule):
    """The segmenter being adapted (``model``), its frozen guide (``guide``) and the target DDPM.

    ``ptl``: ``name`` (progressive | direct | none | ceiling), ``N``, ``K``, ``t_max``, ``pool_size``,
    ``pool_batch``, ``val_every_domains``, ``lr_schedule``, ``watch``; ``num_steps``: respacing of the
    reverse chain; ``guidance`` / ``arrangement``: the config groups; ``diffusion_ckpt``: the target
    DDPM; ``sampling``: keyword settings of the reverse chain passed to every translation
    (``{"variance": translate.variance}``); ``self_training``: ``adapt.self_training`` (the EMA
    teacher, pseudo-labels and ClassMix term; off by default).
    """

    def __init__(self, backbone: dict, num_classes: int, class_names: Sequence[str], optim: dict,
                 max_steps: int, augment: dict | None = None, eval_subsets: dict | None = None,
                 train_keys: Sequence[str] = ("translated", "source"), schedule: dict | None = None,
                 inference: dict | None = None, ignore_index: int = 255, ptl: dict | None = None,
                 guidance: dict | None = None, arrangement: dict | str | None = None,
                 diffusion_ckpt: str | None = None, num_steps: int | None = None, seed: int = 0,
                 speed: dict | None = None, sampling: dict | None = None,
                 self_training: dict | None = None) -> None:
        super().__init__(backbone, num_classes, class_names, optim, max_steps, augment, eval_subsets, train_keys,
                         schedule, inference, ignore_index)
        self.save_hyperparameters()
        p = dict(ptl or {})
        self.ptl = {"name": "progressive", "N": 1, "K": 1, "t_max": None, "pool_size": None, "pool_batch": 8,
                    "val_every_domains": 0, "lr_schedule": "global", **p}
        self.ptl["watch"] = {**WATCH_DEFAULTS, **dict(p.get("watch") or {})}
        self.guide = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.st = {**SELF_TRAINING_DEFAULTS, **dict(self_training or {})}
        if self.st["enabled"]:   # h_0 = g_0 (the EMA's alpha_0 = 0 makes it so at step 0 anyway)
            self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self._diffusion = None
        self.prepared_domain: int | None = None
        self._pool: tuple[Tensor, Tensor] | None = None
        self.last_translation_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ pieces
    @property
    def domains(self) -> DomainSchedule:
        T = int((self.hparams.schedule or {}).get("num_timesteps", 1000))
        p = self.ptl
        return DomainSchedule(p["name"], int(p["N"]), int(p["K"]), p.get("t_max"), T)

    @property
    def translates(self) -> bool:
        """Whether X^n comes from the diffusion model (progressive, direct)."""
        return "translated" in self.train_keys and self.ptl["name"] not in ("none", "ceiling")

    @property
    def ceiling(self) -> bool:
        """Whether X^n is replaced by labelled target-train images (ptl=ceiling)."""
        return "translated" in self.train_keys and self.ptl["name"] == "ceiling"

    @property
    def watch(self) -> dict:
        """``ptl.watch``: judge_ckpt, domain_score, images, classifier_steps, classifier_images."""
        return self.ptl["watch"]

    def _sampling(self, fn: Callable) -> dict:
        """The ``sampling`` keyword settings that ``fn`` (translate_batch / translate_images) takes."""
        sampling = dict(self.hparams.get("sampling") or {})
        if not sampling:
            return {}
        params = inspect.signature(fn).parameters
        return {k: v for k, v in sampling.items() if k in params}

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

    @torch.no_grad()
    def translate(self, images: Tensor, labels: Tensor, n: int, chunk: int, seed: int):
        """SGG(phi^{t_n}(images), guide) of one chunk, noise from ``chunk_seed(seed, t_n, chunk)``."""
        depth = self.domains.depth(n)
        gen = torch.Generator(device=self.device).manual_seed(chunk_seed(seed, depth, chunk))
        guidance = self.guidance_settings
        return translate_batch(self.sampler(), images.to(self.device), labels.to(self.device), depth,
                               self.hparams.num_steps, self.guide if guidance else None, guidance,
                               self.hparams.arrangement, gen, **self._sampling(translate_batch))

    def start_domain(self, n: int, snapshot: bool, stream: SourceStream | None = None) -> None:
        """Enter domain n: refresh the guide (at the domain's first step) and build its pool."""
        if snapshot:
            self.snapshot_guide()
        self.prepared_domain = n
        self._pool = None
        if self.translates and self.ptl.get("pool_size"):
            self._pool = self.build_pool(n, stream)

    def build_pool(self, n: int, stream: SourceStream) -> tuple[Tensor, Tensor]:
        """Translate the domain's first M stream images once, in chunks of ``pool_batch`` (kept on the CPU)."""
        rank, _ = self._rank()
        M = int(self.ptl["pool_size"])
        start = self.domains.start(self.global_step)
        images, labels = stream.images(start, M)
        out, stats = self._translate_all(images, labels, n, domain_seed(self.hparams.seed, n, rank))
        self._record_stats(stats)
        return out, labels

    def _translate_all(self, images: Tensor, labels: Tensor, n: int, seed: int) -> tuple[Tensor, list]:
        """SGG(phi^{t_n}(images), guide) in chunks of ``pool_batch`` on ``seed``: (images on the CPU, Translations)."""
        guidance = self.guidance_settings
        out, stats = [], []
        for _, tr in translate_images(self.sampler(), images, labels, self.domains.depth(n), self.hparams.num_steps,
                                      self.guide if guidance else None, guidance, self.hparams.arrangement,
                                      batch_size=int(self.ptl["pool_batch"]), seed=seed, device=self.device,
                                      **self._sampling(translate_images)):
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
        if self.ceiling:
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
            images, labels = self._pool
            idx = torch.tensor([(i * B + j) % len(images) for j in range(B)])
            return {"image": images[idx].to(self.device), "label": labels[idx].to(self.device)}
        tr = self.translate(source["image"], source["label"], n, chunk=i,
                            seed=domain_seed(self.hparams.seed, n, self._rank()[0]))
        self._record_stats([tr])
        return {"image": tr.images.detach(), "label": source["label"]}

    # ------------------------------------------------------------------ Lightning
    def configure_optimizers(self):
        """The optimiser of :class:`SegmenterModule`; the lr factor of ``ptl.lr_schedule`` (:func:`lr_factor`)."""
        out = super().configure_optimizers()
        mode = self.ptl.get("lr_schedule") or "global"
        if mode == "global":  # the poly decay over max_steps of SegmenterModule
            return out
        domains, max_steps = self.domains, max(int(self.hparams.max_steps), 1)
        power = float(self.hparams.optim.get("poly_power", 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(
            out["optimizer"], lambda step: lr_factor(step, domains, max_steps, power, mode))
        return {**out, "lr_scheduler": {**out["lr_scheduler"], "scheduler": sched}}

    @property
    def watch_stream(self) -> str:
        """The stream whose images the domain's watch scores: the labelled target set (ceiling) or the source."""
        return TARGET_LABELED if self.ceiling else "source"

    def configure_callbacks(self):
        from dasslab.callbacks.ptl import ProgressiveTranslation

        return [ProgressiveTranslation(val_every_domains=int(self.ptl.get("val_every_domains") or 0))]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        step = self.global_step
        n = self.domains.domain(step)
        if self.prepared_domain != n:
            raise RuntimeError(f"PTLModule: domain {n} was not prepared at step {step}; "
                               "the ProgressiveTranslation callback must run (configure_callbacks adds it)")
        if self.self_training:
            self.update_teacher(step)
        parts = {"source": batch["source"]}
        if self.translates:
            parts["translated"] = self.translated_batch(step, batch["source"])
        elif self.ceiling:  # perfect translations: labelled target images in place of X^n
            parts["translated"] = batch[TARGET_LABELED]
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


def train_keys_for(ptl: Mapping[str, Any], loss: str) -> list[str]:
    """The loss terms: ``[translated, source]`` (Eq. 12), ``[translated]`` (L_ada), ``[source]`` (ptl=none);
    for ptl=ceiling "translated" are the labelled target images."""
    if ptl.get("name") == "none":
        return ["source"]
    return ["translated", "source"] if loss == "ada_src" else ["translated"]


def from_config(cfg, datamodule, init_ckpt: str | None = None) -> PTLModule:
    """The adaptation module of ``conf/stage/adapt.yaml``, initialised from the source-only model."""
    from dasslab.lit.build import plain, source_model

    init_ckpt = init_ckpt or cfg.segmenter.get("init_ckpt")
    if not init_ckpt:
        raise ConfigError("stage=adapt needs segmenter.init_ckpt=PATH (the source-only model to adapt)")
    names = list(datamodule.class_names)
    source = source_model(init_ckpt, names, cfg.dataset.name)
    ptl = plain(cfg.ptl)
    module = PTLModule(
        # the weights come from init_ckpt: never fetch ImageNet weights
        backbone={**plain(cfg.backbone), "pretrained": False, "weights": None}, num_classes=len(names),
        class_names=names, optim={**plain(cfg.segmenter), **(plain(cfg.adapt.get("optim")) or {})},
        max_steps=ptl_max_steps(ptl), augment=plain(cfg.augment), eval_subsets=plain(cfg.dataset.eval_subsets),
        train_keys=train_keys_for(ptl, cfg.adapt.loss),
        schedule={k: cfg.diffusion[k] for k in ("num_timesteps", "beta_start", "beta_end")},
        inference=plain(cfg.eval.get("inference")) or {"mode": "whole"}, ptl=ptl,
        guidance=plain(cfg.get("guidance")), arrangement=plain(cfg.get("arrangement")),
        diffusion_ckpt=cfg.get("diffusion_ckpt"), num_steps=cfg.translate.get("num_steps"), seed=int(cfg.seed),
        speed={k: cfg.diffusion.get(k) for k in ("compile", "autocast", "compile_cpu", "autocast_cpu")},
        sampling={"variance": cfg.translate.get("variance", "beta")}, self_training=self_training_settings(cfg))
    module.model.load_state_dict(source.model.state_dict())
    module.snapshot_guide()
    if module.self_training:
        module.teacher.load_state_dict(module.model.state_dict())
    return module


def self_training_settings(cfg) -> dict:
    """``adapt.self_training`` over its defaults (off where the config has no such section)."""
    from dasslab.lit.build import plain

    adapt = cfg.get("adapt") or {}
    return {**SELF_TRAINING_DEFAULTS, **(plain(adapt.get("self_training")) or {})}


# --------------------------------------------------------------------------- config-time checks
def _checkpoint_classes(path: str, setting: str) -> list[str]:
    from dasslab.checkpoints import read_checkpoint
    from dasslab.errors import CheckpointError

    hp = read_checkpoint(path, setting).get("hyper_parameters", {})
    if "class_names" not in hp:
        raise CheckpointError(f"{setting}={path}: not a segmenter checkpoint (no class names)")
    return list(hp["class_names"])


def validate_ptl(cfg, check_files: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for the first bad adaptation setting.

    Settings: ptl.name/N/K/t_max/max_steps/pool_size/pool_batch/val_every_domains/lr_schedule/watch,
    translate.num_steps, adapt.loss, the labelled target-train split of ptl=ceiling; with
    ``check_files``: the source set size (pool), the classes of segmenter.init_ckpt, guide_ckpt and
    ptl.watch.judge_ckpt against the dataset's, and the diffusion checkpoint against the crop size."""
    p, T = cfg.ptl, int(cfg.diffusion.num_timesteps)

    def integer(key, value, lo=1, hi=None, null=False):
        if value is None and null:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"{key}={value!r}: expected an integer {rng}{' or null' if null else ''}")

    if p.get("name") not in MODES:
        raise ConfigError(f"ptl.name={p.get('name')!r}: expected one of {', '.join(MODES)} (ptl=<name>)")
    integer("ptl.K", p.K)
    integer("ptl.N", p.N)
    integer("ptl.t_max", p.get("t_max"), 1, T, null=True)
    if p.get("t_max") is None and p.N > T:
        raise ConfigError(f"ptl.N={p.N} exceeds diffusion.num_timesteps={T}; set ptl.t_max <= {T} to stride "
                          f"the domains")
    integer("ptl.max_steps", p.get("max_steps"), null=True)
    integer("ptl.pool_size", p.get("pool_size"), null=True)
    integer("ptl.pool_batch", p.get("pool_batch", 8))
    integer("ptl.val_every_domains", p.get("val_every_domains", 0), lo=0)
    lr = p.get("lr_schedule", "global")
    if lr not in LR_SCHEDULES:
        raise ConfigError(f"ptl.lr_schedule={lr!r}: expected one of {', '.join(LR_SCHEDULES)}")
    watch = {**WATCH_DEFAULTS, **(p.get("watch") or {})}
    integer("ptl.watch.images", watch["images"], lo=0)
    integer("ptl.watch.classifier_steps", watch["classifier_steps"])
    integer("ptl.watch.classifier_images", watch["classifier_images"])
    if not isinstance(watch["domain_score"], bool):
        raise ConfigError(f"ptl.watch.domain_score={watch['domain_score']!r}: expected true or false")
    if p.name == "ceiling" and cfg.dataset.get(TARGET_LABELED) is None:
        raise ConfigError(f"ptl.name=ceiling: dataset={cfg.dataset.get('name')} has no labelled target-train split "
                          f"(dataset.{TARGET_LABELED}); the ceiling trains on target labels")
    integer("translate.num_steps", cfg.translate.get("num_steps"), null=True)
    loss = cfg.adapt.get("loss")
    if loss not in ("ada_src", "ada"):
        raise ConfigError(f"adapt.loss={loss!r}: expected 'ada_src' (Eq. 12) or 'ada' (Table 3 (a))")
    if p.name == "none" and loss == "ada":
        raise ConfigError("adapt.loss=ada with ptl=none: nothing is translated, L_ada is empty; use adapt.loss=ada_src")
    validate_self_training(cfg)
    if not check_files:
        return
    from omegaconf import OmegaConf

    from dasslab.data.datamodule import build_dataset

    source = build_dataset(cfg.dataset, "source", train=True, limit=cfg.data.get("limit_train"))
    if p.get("pool_size") and p.name not in ("none", "ceiling") and p.pool_size > len(source):
        raise ConfigError(f"ptl.pool_size={p.pool_size} is larger than the source set ({len(source)} images)")
    names = list(source.class_names)
    for key in ("segmenter.init_ckpt", "guide_ckpt", "ptl.watch.judge_ckpt"):
        path = OmegaConf.select(cfg, key, default=None)
        if key == "segmenter.init_ckpt" and not path:
            raise ConfigError("segmenter.init_ckpt is not set; stage=adapt starts from the source-only model")
        if path and _checkpoint_classes(path, key) != names:
            raise ConfigError(f"{key}={path}: its classes differ from dataset={cfg.dataset.name}'s {len(names)} "
                              f"classes ({', '.join(names[:4])}, …)")
    if p.name in ("none", "ceiling"):  # nothing is translated: no diffusion model
        return
    if not cfg.get("diffusion_ckpt"):
        raise ConfigError("diffusion_ckpt is not set; ptl=progressive|direct translates with the target DDPM")
    from dasslab.checkpoints import load_diffusion

    diffusion = load_diffusion(cfg.diffusion_ckpt, setting="diffusion_ckpt")
    crop = list(cfg.dataset.crop_size)
    try:
        diffusion.check_data((1, 3, *crop), f"dataset.crop_size={crop}")
    except ValueError as e:
        raise ConfigError(f"diffusion_ckpt={cfg.diffusion_ckpt}: {e}") from None
    if int(diffusion.hparams.num_timesteps) < (p.get("t_max") or p.N):
        raise ConfigError(f"diffusion_ckpt={cfg.diffusion_ckpt}: T={diffusion.hparams.num_timesteps} timesteps, "
                          f"fewer than the deepest domain needs ({p.get('t_max') or p.N})")



def validate_self_training(cfg) -> None:
    """One line for the first bad ``adapt.self_training`` setting (and a dataset without target images)."""
    raw = (cfg.get("adapt") or {}).get("self_training") or {}
    unknown = sorted(set(raw) - set(SELF_TRAINING_DEFAULTS))
    if unknown:
        raise ConfigError(f"adapt.self_training.{unknown[0]}: unknown setting; expected one of "
                          f"{', '.join(SELF_TRAINING_DEFAULTS)}")
    s = self_training_settings(cfg)

    def number(key, lo, hi, lo_open=False, hi_open=False):
        v = s[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
            raise ConfigError(f"adapt.self_training.{key}={v!r}: expected a number in {rng}")

    for key in ("enabled", "blur"):
        if not isinstance(s[key], bool):
            raise ConfigError(f"adapt.self_training.{key}={s[key]!r}: expected true or false")
    number("ema", 0, 1, hi_open=True)
    number("threshold", 0, 1)
    number("weight", 0, None)
    number("jitter", 0, 1)
    number("p_jitter", 0, 1)
    if s["mix"] not in MIX_SOURCES:
        raise ConfigError(f"adapt.self_training.mix={s['mix']!r}: expected one of {', '.join(MIX_SOURCES)}")
    if not s["enabled"]:
        return
    if s["mix"] == "translated" and cfg.ptl.name not in ("progressive", "direct", "ceiling"):
        raise ConfigError(f"adapt.self_training.mix=translated with ptl={cfg.ptl.name}: nothing is translated; "
                          "use mix=source or auto")
    if cfg.dataset.get(TARGET) is None:
        raise ConfigError(f"adapt.self_training.enabled=true: dataset={cfg.dataset.get('name')} has no target-train "
                          f"images (dataset.{TARGET}); self-training learns from them")
