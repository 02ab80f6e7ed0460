"""The mIoU-over-n curve of PTL (Sec. 4.3, Fig. 5-style) as a Lightning callback.

The domain walk itself is the module's (:meth:`dasslab.ptl.module.PTLModule.enter_domain`). This
callback measures, every ``val_every_domains`` domains (and before the first), the target-val mIoU of
the current segmenter — each rank a shard of the val set, the confusion matrix summed across ranks —
and writes the curve as ``ptl_miou.png`` / ``ptl_curve.json`` in the run directory and to the loggers
(``ptl/val_miou``); ptl=direct|ceiling measure once more at the end (n = N). The entry of domain n
carries the watched statistics of what domain n trained on (``"pool"``, :mod:`dasslab.ptl.watch`).
The curve is in the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Subset

from dasslab.utils.io import atomic_write_text


class MiouOverDomains(L.Callback):
    """The target-val mIoU after every ``val_every_domains`` domains (added by ``PTLModule.configure_callbacks``)."""

    def __init__(self, val_every_domains: int = 0) -> None:
        self.val_every_domains = int(val_every_domains)
        self.curve: list[dict] = []                   # {"n", "step", "miou"[, "pool"]} per measurement

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if self.val_every_domains and not self.curve and trainer.global_step == 0:
            self._measure(trainer, module, n=0)

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

    # ------------------------------------------------------------------ mIoU over n
    @torch.no_grad()
    def _measure(self, trainer: L.Trainer, module, n: int) -> None:
        from dasslab.callbacks.images import save_miou_curve
        from dasslab.data.datamodule import eval_collate
        from dasslab.segmentation.inference import upsample_to
        from dasslab.segmentation.metrics import SegmentationMetrics

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
        pools = module.watcher.pools
        if int(n) in pools:  # what the segmenter trained on in domain n
            entry["pool"] = dict(pools[int(n)])
        self.curve.append(entry)
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics({"ptl/val_miou": miou, "ptl/val_n": float(n)}, step=trainer.global_step)
            out = Path(trainer.default_root_dir)
            atomic_write_text(out / "ptl_curve.json", json.dumps(self.curve, indent=2))
            save_miou_curve(out / "ptl_miou.png", self.curve, trainer)

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"curve": list(self.curve), "val_every_domains": self.val_every_domains}

    def load_state_dict(self, state: dict) -> None:
        self.curve = list(state.get("curve", []))
