"""Watching what PTL trains on (``ptl.watch``): each domain's X^n scored once, at the domain's entry.

At each domain start (rank 0) the first ``watch.images`` images the segmenter trains on as X^n
(:meth:`dasslab.ptl.module.PTLModule.watch_images`: its pool, or as many stream images translated with
the domain's guide on a seed of their own; ptl=ceiling's labelled target images) are scored:

* ``hf`` — their high-frequency energy — beside ``hf_target`` of as many target-train images, always;
* with ``watch.judge_ckpt`` the label consistency of the judge against the source labels (foreground
  mIoU ``consistency``, all classes ``consistency_all``);
* with ``watch.domain_score`` the mean P(target) of a source-vs-target classifier trained once (Eq. 2
  noise on both domains, t below the deepest domain, ``watch.classifier_steps``).

The entry of domain n in ``ptl_curve.json`` carries these statistics (``"pool"``), ``ptl_miou.png`` a
panel of them. The watch uses its own seeds and leaves the global RNG as it was: it does not change
what is trained. Its statistics are in the checkpoint (a resumed run does not score a domain twice).
"""

from __future__ import annotations

import copy

import torch

from dasslab.data.transforms import derive_seed, seed_transforms

__all__ = ["PoolWatch"]


class PoolWatch:
    """The watched statistics of every domain (``pools``: n -> stats) and what computing them needs."""

    def __init__(self, settings: dict) -> None:
        self.settings = dict(settings)
        self.pools: dict[int, dict] = {}
        self.hf_target: float | None = None
        self._judge = None          # (model, foreground classes), loaded once
        self._classifier = None     # the domain classifier, trained once per fit

    @torch.no_grad()
    def observe(self, module, n: int, dm) -> dict | None:
        """Score domain n's X^n once (nothing when ``watch.images`` is 0 or n was scored before)."""
        from dasslab.analysis.image_stats import high_frequency_energy
        from dasslab.utils.rng import own_rng

        w = self.settings
        if n in self.pools or not int(w["images"]):
            return None
        images, labels = module.watch_images(n, dm.stream(module.watch_stream))
        with own_rng(module.device):
            stats = {"images": len(images), "hf": high_frequency_energy(images),
                     "hf_target": self._target_hf(dm)}
            if w.get("judge_ckpt"):
                stats.update(self._consistency(module, images, labels))
            if w.get("domain_score"):
                from dasslab.analysis.domain_score import domain_score

                stats["domain_score"] = domain_score(self._domain_classifier(dm, module), images)
        self.pools[n] = stats = {k: int(v) if k == "images" else float(v) for k, v in stats.items()}
        for lg in module.trainer.loggers:
            lg.log_metrics({f"ptl/watch_{k}": float(v) for k, v in stats.items()}, step=module.global_step)
        return stats

    def _stack(self, dm, key: str, limit: int, salt: int):
        """The first ``limit`` images of ``dataset.<key>`` with the training transform, seeded (its own copy)."""
        from dasslab.data.datamodule import build_dataset

        ds = build_dataset(dm.cfg, key, train=True, limit=limit)
        seed_transforms(ds, derive_seed(dm.seed, salt))
        return torch.stack([ds[i]["image"] for i in range(min(limit, len(ds)))])

    def _target_hf(self, dm) -> float:
        from dasslab.analysis.image_stats import high_frequency_energy

        if self.hf_target is None:
            self.hf_target = high_frequency_energy(self._stack(dm, "target", int(self.settings["images"]), 17))
        return self.hf_target

    def _consistency(self, module, images, labels) -> dict:
        from dasslab.analysis.judge import foreground_classes, label_consistency
        from dasslab.checkpoints import load_segmenter

        if self._judge is None:
            judge = load_segmenter(self.settings["judge_ckpt"], setting="ptl.watch.judge_ckpt")
            self._judge = (judge.model.to(module.device).eval().requires_grad_(False),
                           foreground_classes(judge.class_names, ["background"]))
        judge, fg = self._judge
        c = label_consistency(judge, images, labels, module.hparams.num_classes, foreground=fg,
                              ignore_index=module.hparams.ignore_index)
        return {"consistency": c["miou_fg"], "consistency_all": c["miou"]}

    def _domain_classifier(self, dm, module):
        """Source-train vs target-train (``watch.classifier_images`` each), Eq. 2 noise below the deepest t_n."""
        from dasslab.analysis.domain_score import train_domain_classifier

        if self._classifier is None:
            w = self.settings
            count = int(w["classifier_images"])
            source, target = self._stack(dm, "source", count, 19), self._stack(dm, "target", count, 17)
            schedule = copy.deepcopy(module.schedule).cpu()
            sched = module.domains
            with torch.enable_grad():  # observe runs under no_grad
                self._classifier = train_domain_classifier(
                    source, target, schedule.q_sample, t_max=max(sched.depth(sched.N), 1),
                    steps=int(w["classifier_steps"]), seed=derive_seed(int(module.hparams.seed), 23),
                    device=module.device)
        return self._classifier

    def state_dict(self) -> dict:
        return {"pools": [[n, dict(s)] for n, s in sorted(self.pools.items())], "hf_target": self.hf_target}

    def load_state_dict(self, state: dict) -> None:
        self.pools = {int(n): dict(s) for n, s in state.get("pools", [])}
        self.hf_target = state.get("hf_target")
