"""Semantic Gradient Guidance (Sec. 4.2): the guided reverse step and the gradients it uses.

Start with :mod:`dasslab.guidance.sgg`: one guided reverse step, all of it (mean, Sigma, lambda,
sign, LCG/GSG choice, ignore pixels). The guide is seen only as two callables,
``preprocess(x)`` ([-1, 1] images -> the segmenter's input space) and ``net(z) -> logits``;
nothing here imports the segmentation models or Lightning.

* :class:`SemanticGuidance` / :func:`make_guidance` — the guidance function handed to the sampler.
* :func:`validate_guidance` — the one check of the ``guidance``/``arrangement`` settings.
* :func:`lcg_grad` — Local Class-regional Guidance (Eq. 6-9), all classes in one batched pass.
* :func:`gsg_grad` — Global Scene Guidance (Eq. 10).
* :func:`arrangement_plan` — which of the two acts at each reverse step (Table 5).
"""

from dasslab.guidance.arrangement import ARRANGEMENTS, arrangement_plan
from dasslab.guidance.gsg import gsg_grad, gsg_loss_and_grad
from dasslab.guidance.lcg import (
    ClassCopies,
    auto_max_batch,
    class_copies,
    copies_that_fit,
    lcg_grad,
    lcg_loss_and_grad,
)
from dasslab.guidance.losses import REDUCTIONS, guide_mode, pixel_ce, reduce_terms, segmentation_loss
from dasslab.guidance.settings import GuidanceSettings, validate_guidance
from dasslab.guidance.sgg import GuidanceStat, SemanticGuidance, make_guidance

__all__ = [
    "ARRANGEMENTS",
    "REDUCTIONS",
    "ClassCopies",
    "GuidanceSettings",
    "GuidanceStat",
    "SemanticGuidance",
    "arrangement_plan",
    "auto_max_batch",
    "class_copies",
    "copies_that_fit",
    "gsg_grad",
    "gsg_loss_and_grad",
    "guide_mode",
    "lcg_grad",
    "lcg_loss_and_grad",
    "make_guidance",
    "pixel_ce",
    "reduce_terms",
    "segmentation_loss",
    "validate_guidance",
]
