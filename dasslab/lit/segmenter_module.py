"""The segmenter as a LightningModule: source-only, oracle and adaptation training.

Training loss: the sum over ``train_keys`` of the cross-entropy (ignore 255) on each
batch entry, e.g. ``[source]`` (source only), ``[target_train_labeled]`` (oracle) or
``[translated, source]`` = L_ada + L_src (Eq. 12). Optimiser: SGD with momentum and
weight decay, poly learning-rate decay over ``max_steps`` (Sec. 5.1); ``optimizer=adamw`` for
models trained from scratch (the digits recipe). A fraction
of samples is noisy + masked (Appendix C, :mod:`dasslab.segmentation.augment`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L
import torch
import torch.nn.functional as F

from dasslab.diffusion.schedule import NoiseSchedule
from dasslab.segmentation import build_segmenter
from dasslab.segmentation.augment import noisy_masked
from dasslab.segmentation.inference import predict_logits, upsample_to
from dasslab.segmentation.metrics import SegmentationMetrics


class SegmenterModule(L.LightningModule):
    def __init__(self, backbone: dict, num_classes: int, class_names: Sequence[str], optim: dict,
                 max_steps: int, augment: dict | None = None, eval_subsets: dict | None = None,
                 train_keys: Sequence[str] = ("source",), schedule: dict | None = None,
                 inference: dict | None = None, ignore_index: int = 255) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_segmenter(backbone["name"], num_classes,
                                     pretrained=bool(backbone.get("pretrained", False)),
                                     weights=backbone.get("weights"),
                                     freeze_bn=backbone.get("freeze_bn"), **dict(backbone.get("options") or {}))
        self.class_names = list(class_names)
        self.train_keys = list(train_keys)
        self.augment = dict(augment or {"enabled": False})
        sched = dict(schedule or {})
        self.schedule = NoiseSchedule.linear(sched.get("num_timesteps", 1000), sched.get("beta_start", 1e-4),
                                             sched.get("beta_end", 0.02))
        self.val_metric = SegmentationMetrics(num_classes, ignore_index, eval_subsets)
        self.inference = dict(inference or {"mode": "whole"})
        self.last_summary: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss_on(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on one batch entry, with the Appendix C augmentation when enabled."""
        keep = None
        aug = self.augment
        if self.training and aug.get("enabled") and (aug.get("p", 0) > 0 or aug.get("mask_p", 0) > 0):
            image, label, keep = noisy_masked(image, label, self.schedule.q_sample, self.schedule.num_timesteps,
                                              p=float(aug["p"]), mask_p=float(aug.get("mask_p", 0.0)),
                                              t_max=aug.get("t_max"), ignore_index=self.hparams.ignore_index)
        z = self.model.normalize(image)
        if keep is not None:
            z = z * keep
        logits = self.model.forward_normalized(z)
        if not (label != self.hparams.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, label, ignore_index=self.hparams.ignore_index)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        total = 0.0
        for key in self.train_keys:
            loss = self.loss_on(batch[key]["image"], batch[key]["label"])
            self.log(f"train/loss_{key}", loss, prog_bar=False, batch_size=batch[key]["image"].shape[0])
            total = total + loss
        self.log("train/loss", total, prog_bar=True)
        return total

    def predict_batch(self, image: torch.Tensor) -> torch.Tensor:
        inf = self.inference
        return predict_logits(self.model, image, inf.get("mode", "whole"), inf.get("crop"), inf.get("stride"))

    def _update_metric(self, batch: dict) -> None:
        logits = self.predict_batch(batch["image"])
        labels = batch["label"]
        if isinstance(labels, torch.Tensor):
            self.val_metric.update(upsample_to(logits, labels.shape[-2:]), labels)
        else:  # labels of different sizes
            for lg, lab in zip(logits, labels):
                self.val_metric.update(upsample_to(lg[None], lab.shape[-2:]), lab[None])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._update_metric(batch)

    def on_validation_epoch_end(self) -> None:
        summary = self.val_metric.summary()
        for name, value in summary.items():
            self.log(f"val/{name}", value, prog_bar=name == "miou", sync_dist=False)
        self.last_summary = summary
        self.last_iou = self.val_metric.iou().cpu()
        self.val_metric.reset()

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def configure_optimizers(self):
        o = self.hparams.optim
        groups = [{"params": [p for p in g["params"] if p.requires_grad], "lr": o["lr"] * g.get("lr_mult", 1.0)}
                  for g in self.model.param_groups()]
        groups = [g for g in groups if g["params"]]
        name = o.get("optimizer", "sgd")
        if name == "sgd":
            opt = torch.optim.SGD(groups, lr=o["lr"], momentum=o.get("momentum", 0.9),
                                  weight_decay=o.get("weight_decay", 5e-4))
        elif name == "adamw":
            opt = torch.optim.AdamW(groups, lr=o["lr"], weight_decay=o.get("weight_decay", 1e-2))
        else:
            raise ValueError(f"segmenter.optimizer={name!r}: expected 'sgd' (the paper) or 'adamw'")
        max_steps, power = max(int(self.hparams.max_steps), 1), float(o.get("poly_power", 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: max(1.0 - min(step, max_steps) / max_steps, 0.0) ** power)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

