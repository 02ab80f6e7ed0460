"""The PTL loop (Sec. 4.3) as a Lightning callback: it moves n, refreshes the guide, watches mIoU.

Lightning 2.x has no loop customisation, so the domain walk lives here:

* n = 1 + step // K (capped at N) is read off the global step — every DDP rank agrees and a
  resume continues where it stopped;
* at the first step of domain n the current segmenter is frozen into the guide g_{n-1}
  (:meth:`PTLModule.start_domain`, which also translates the domain's pool); resuming in the
  middle of a domain keeps the guide restored from the checkpoint (it is a submodule, ``guide.*``);
* every ``val_every_domains`` domains (and before the first) the target-val mIoU of the current
  segmenter is measured — each rank a shard of the val set, the confusion matrix summed across
  ranks — and the mIoU-over-n curve is written as ``ptl_miou.png`` / ``ptl_curve.json`` in the run
  directory and logged (``ptl/val_miou``); ptl=direct|ceiling measure once more at the end (n = N);
* at the start of each domain (rank 0) what the segmenter trains on as X^n is watched
  (``ptl.watch``, :meth:`PTLModule.watch_images`): ``hf`` — the high-frequency energy of its first
  ``watch.images`` images — beside ``hf_target`` of as many target-train images, always; with
  ``watch.judge_ckpt`` the label consistency of the judge against the source labels (foreground
  mIoU ``consistency``, all classes ``consistency_all``); with ``watch.domain_score`` the mean
  P(target) of a source-vs-target classifier trained once (Eq. 2 noise on both domains, t below the
  deepest domain, ``watch.classifier_steps``). The entry of domain n in ``ptl_curve.json`` carries
  the statistics of domain n's pool (``"pool"``), ``ptl_miou.png`` a panel of them. The watch uses
  its own seeds and leaves the global RNG as it was: it does not change what is trained.

The callback's state (the domains whose guide it refreshed, the curve, the watched statistics) is
in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Subset

from dasslab.data.transforms import derive_seed, seed_transforms
from dasslab.utils.io import atomic_write_text


class ProgressiveTranslation(L.Callback):
    """Walk the domains of a :class:`~dasslab.lit.ptl_module.PTLModule` (added by its ``configure_callbacks``)."""

    def __init__(self, val_every_domains: int = 0) -> None:
        self.val_every_domains = int(val_every_domains)
        self.refreshed: list[tuple[int, int]] = []   # (n, step) of every guide refresh
        self.curve: list[dict] = []                   # {"n", "step", "miou"[, "pool"]} per measurement
        self.pools: dict[int, dict] = {}              # n -> the watched statistics of domain n's X^n
        self.hf_target: float | None = None
        self._judge = None                            # (model, foreground classes), loaded once
        self._classifier = None                       # the domain classifier, trained once per fit

    # ------------------------------------------------------------------ the domain walk
    def _enter(self, trainer: L.Trainer, module) -> None:
        step = trainer.global_step
        sched = module.domains
        n = sched.domain(step)
        if module.prepared_domain == n:
            return
        first = step == sched.start(step)  # the domain's first step: g_{n-1} := g
        stream = trainer.datamodule.stream() if module.translates and module.ptl.get("pool_size") else None
        module.start_domain(n, snapshot=first, stream=stream)
        if first:
            self.refreshed.append((n, step))
        self._watch(trainer, module, n)

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self._enter(trainer, module)
        if self.val_every_domains and not self.curve and trainer.global_step == 0:
            self._measure(trainer, module, n=0)

    def on_train_batch_start(self, trainer: L.Trainer, module, batch, batch_idx: int) -> None:
        self._enter(trainer, module)

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        every = self.val_every_domains
        sched = module.domains
        done = trainer.global_step  # steps completed
        if not every or sched.mode == "none":
            return
        if sched.mode == "progressive" and done % sched.K == 0 and done // sched.K <= sched.N:
            n = done // sched.K     # domain n has just ended: the segmenter is g_n
            last = n == sched.N or done >= trainer.max_steps
            if n % every == 0 or last:
                self._measure(trainer, module, n)
        elif sched.mode != "progressive" and 0 < trainer.max_steps <= done:  # the single domain has ended
            self._measure(trainer, module, sched.N)

    # ------------------------------------------------------------------ what PTL trains on
    @torch.no_grad()
    def _watch(self, trainer: L.Trainer, module, n: int) -> None:
        """The statistics of domain n's X^n (``ptl.watch``), once per domain, on rank 0."""
        from dasslab.analysis.image_stats import high_frequency_energy
        from dasslab.utils.rng import own_rng

        w = module.watch
        if n in self.pools or not int(w["images"]) or not (module.translates or module.ceiling):
            return
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        dm = trainer.datamodule
        images, labels = module.watch_images(n, dm.stream(module.watch_stream))
        with own_rng(module.device):
            stats = {"images": len(images), "hf": high_frequency_energy(images),
                     "hf_target": self._target_hf(dm, module)}
            if w.get("judge_ckpt"):
                stats.update(self._consistency(module, images, labels))
            if w.get("domain_score"):
                from dasslab.analysis.domain_score import domain_score

                stats["domain_score"] = domain_score(self._domain_classifier(dm, module), images)
        self.pools[n] = stats = {k: int(v) if k == "images" else float(v) for k, v in stats.items()}
        for lg in trainer.loggers:
            lg.log_metrics({f"ptl/watch_{k}": float(v) for k, v in stats.items()}, step=trainer.global_step)

    def _stack(self, dm, key: str, limit: int, salt: int):
        """The first ``limit`` images of ``dataset.<key>`` with the training transform, seeded (its own copy)."""
        from dasslab.data.datamodule import build_dataset

        ds = build_dataset(dm.cfg, key, train=True, limit=limit)
        seed_transforms(ds, derive_seed(dm.seed, salt))
        return torch.stack([ds[i]["image"] for i in range(min(limit, len(ds)))])

    def _target_hf(self, dm, module) -> float:
        from dasslab.analysis.image_stats import high_frequency_energy

        if self.hf_target is None:
            self.hf_target = high_frequency_energy(self._stack(dm, "target", int(module.watch["images"]), 17))
        return self.hf_target

    def _consistency(self, module, images, labels) -> dict:
        from dasslab.analysis.judge import foreground_classes, label_consistency
        from dasslab.checkpoints import load_segmenter

        if self._judge is None:
            judge = load_segmenter(module.watch["judge_ckpt"], setting="ptl.watch.judge_ckpt")
            self._judge = (judge.model.to(module.device).eval().requires_grad_(False),
                           foreground_classes(judge.class_names, ["background"]))
        judge, fg = self._judge
        c = label_consistency(judge, images, labels, module.hparams.num_classes, foreground=fg,
                              ignore_index=module.hparams.ignore_index)
        return {"consistency": c["miou_fg"], "consistency_all": c["miou"]}

    def _domain_classifier(self, dm, module):
        """Source-train vs target-train (``watch.classifier_images`` each), Eq. 2 noise below the deepest t_n."""
        import copy

        from dasslab.analysis.domain_score import train_domain_classifier

        if self._classifier is None:
            w = module.watch
            count = int(w.get("classifier_images", 1000))
            source, target = self._stack(dm, "source", count, 19), self._stack(dm, "target", count, 17)
            schedule = copy.deepcopy(module.schedule).cpu()
            sched = module.domains
            with torch.enable_grad():  # _watch runs under no_grad
                self._classifier = train_domain_classifier(
                    source, target, schedule.q_sample, t_max=max(sched.depth(sched.N), 1),
                    steps=int(w["classifier_steps"]), seed=derive_seed(int(module.hparams.seed), 23),
                    device=module.device)
        return self._classifier

    # ------------------------------------------------------------------ mIoU over n
    @torch.no_grad()
    def _measure(self, trainer: L.Trainer, module, n: int) -> None:
        from dasslab.callbacks.images import save_miou_curve
        from dasslab.data.datamodule import eval_collate
        from dasslab.metrics import SegmentationMetrics
        from dasslab.segmentation.inference import upsample_to

        dm = trainer.datamodule
        if dm is None or dm.val_set is None:
            return
        val = dm.val_set
        if trainer.world_size > 1:  # a shard per rank; the confusion matrix is summed on compute
            val = Subset(val, range(trainer.global_rank, len(val), trainer.world_size))
        loader = DataLoader(val, batch_size=dm.val_batch_size, shuffle=False, collate_fn=eval_collate)
        metric = SegmentationMetrics(module.hparams.num_classes, module.hparams.ignore_index,
                                     module.hparams.eval_subsets).to(module.device)
        was_training = module.training
        module.eval()
        for batch in loader:
            logits = module.predict_batch(batch["image"].to(module.device))
            labels = batch["label"]
            for i in range(len(logits)):
                lab = labels[i].to(module.device)
                metric.update(upsample_to(logits[i:i + 1], lab.shape[-2:]), lab[None])
        module.train(was_training)
        miou = float(metric.summary()["miou"])  # compute() sums the confusion matrix over the ranks
        entry = {"n": int(n), "step": int(trainer.global_step), "miou": miou}
        if int(n) in self.pools:  # what the segmenter trained on in domain n
            entry["pool"] = dict(self.pools[int(n)])
        self.curve.append(entry)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics({"ptl/val_miou": miou, "ptl/val_n": float(n)}, step=trainer.global_step)
            out = Path(trainer.default_root_dir)
            atomic_write_text(out / "ptl_curve.json", json.dumps(self.curve, indent=2))
            save_miou_curve(out / "ptl_miou.png", self.curve, trainer)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"refreshed": [list(r) for r in self.refreshed], "curve": list(self.curve),
                "val_every_domains": self.val_every_domains,
                "pools": [[n, dict(s)] for n, s in sorted(self.pools.items())], "hf_target": self.hf_target}

    def load_state_dict(self, state: dict) -> None:
        self.refreshed = [tuple(r) for r in state.get("refreshed", [])]
        self.curve = list(state.get("curve", []))
        self.pools = {int(n): dict(s) for n, s in state.get("pools", [])}
        self.hf_target = state.get("hf_target")
