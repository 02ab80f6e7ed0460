"""What the calibration measures: one translation setting applied to a fixed set of source images.

A :class:`Probe` holds the calibration images (source-train images and their labels), the target DDPM's
sampler, the guide (the source model), the target images' high-frequency energy and a domain classifier
trained on source vs unlabeled target images. ``probe(depth, variance, shift)`` translates every image with
that setting -- on the same noise at one depth whatever the variance or shift (the one seed rule of
:func:`dasslab.guidance.translation.translate_images`), so settings are compared image by image -- and
returns the label-free statistics the choices read (:mod:`dasslab.calibration.choose`). Measurements are kept:
asking for one setting twice costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dasslab.analysis.domain_score import domain_score
from dasslab.analysis.image_stats import high_frequency_energy
from dasslab.analysis.judge import label_consistency
from dasslab.guidance.translation import translate_images

__all__ = ["Probe"]


class Probe:
    """``probe(depth, variance, shift=None)`` -> ``{hf_ratio, hf, domain, agreement, seconds}`` (see the module).

    ``guidance``: the guidance group (its ``shift`` replaced by each call's); ``shift=None`` translates
    unguided. ``foreground``: the classes the agreement averages (all but background-like names); without a
    guide (an unguided chain's calibration) no agreement is measured."""

    def __init__(self, sampler, guide: nn.Module | None, images: Tensor, labels: Tensor, target_hf: float,
                 classifier: nn.Module, num_classes: int, foreground: Sequence[int], num_steps: int | None,
                 guidance: Mapping[str, Any] | None, arrangement, batch_size: int, seed: int,
                 device: torch.device) -> None:
        self.sampler, self.guide = sampler, guide
        self.images, self.labels = images, labels
        self.target_hf, self.classifier = float(target_hf), classifier
        self.num_classes, self.foreground = int(num_classes), list(foreground)
        self.num_steps, self.guidance, self.arrangement = num_steps, dict(guidance or {}), arrangement
        self.batch_size, self.seed, self.device = int(batch_size), int(seed), device
        self.measured: dict[tuple, dict] = {}
        self.translations: dict[tuple, Tensor] = {}

    def key(self, depth: int, variance, shift: float | None) -> tuple:
        v = round(float(variance), 6) if not isinstance(variance, str) else variance
        return int(depth), v, None if shift is None else round(float(shift), 6)

    def __call__(self, depth: int, variance, shift: float | None = None) -> dict:
        key = self.key(depth, variance, shift)
        if key not in self.measured:
            t0 = time.perf_counter()
            out = self.translate(depth, variance, shift)
            self.translations[key] = out[:8]
            self.measured[key] = {**self.score(out), "seconds": round(time.perf_counter() - t0, 2)}
        return self.measured[key]

    @torch.no_grad()
    def translate(self, depth: int, variance, shift: float | None) -> Tensor:
        guidance = {**self.guidance, "shift": float(shift)} if shift is not None else None
        outs = []
        for _, tr in translate_images(self.sampler, self.images, self.labels, int(depth), self.num_steps,
                                      guide=self.guide if guidance else None, guidance=guidance,
                                      arrangement=self.arrangement, batch_size=self.batch_size, seed=self.seed,
                                      device=self.device, variance=variance):
            outs.append(tr.images.detach().cpu())
        return torch.cat(outs)

    def score(self, images: Tensor) -> dict:
        """The label-free statistics of translated images (and of real ones, for the reference rows)."""
        hf = high_frequency_energy(images)
        agreement = None if self.guide is None else label_consistency(
            self.guide, images, self.labels, self.num_classes, foreground=self.foreground)["miou_fg"]
        return {"hf": hf, "hf_ratio": hf / self.target_hf if self.target_hf else float("nan"),
                "domain": domain_score(self.classifier, images), "agreement": agreement}
