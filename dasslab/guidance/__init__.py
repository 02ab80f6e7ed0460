"""Semantic Gradient Guidance (Sec. 4.2): gradients of a guide segmenter's CE w.r.t. the noisy image.

The guide is seen only as two callables, ``preprocess(x)`` ([-1, 1] images -> the
segmenter's input space) and ``net(z) -> logits``; nothing here imports the
segmentation models or Lightning.

* :func:`lcg_grad` — Local Class-regional Guidance (Eq. 6-9), all classes in one batched pass.
* :func:`gsg_grad` — Global Scene Guidance (Eq. 10).
* :func:`arrangement_plan` — which of the two acts at each reverse step (Table 5).
* :class:`SemanticGuidance` — the sampler's guidance function ``(x_t, step, num_steps) -> lambda * grad``.
"""

from dasslab.guidance.arrangement import ARRANGEMENTS, arrangement_plan
from dasslab.guidance.gsg import gsg_grad, gsg_loss_and_grad
from dasslab.guidance.lcg import ClassCopies, class_copies, lcg_grad, lcg_loss_and_grad
from dasslab.guidance.losses import REDUCTIONS, guide_mode, pixel_ce, reduce_terms, segmentation_loss
from dasslab.guidance.sgg import GuidanceStat, SemanticGuidance, make_guidance

__all__ = [
    "ARRANGEMENTS",
    "REDUCTIONS",
    "ClassCopies",
    "GuidanceStat",
    "SemanticGuidance",
    "arrangement_plan",
    "class_copies",
    "gsg_grad",
    "gsg_loss_and_grad",
    "guide_mode",
    "lcg_grad",
    "lcg_loss_and_grad",
    "make_guidance",
    "pixel_ce",
    "reduce_terms",
    "segmentation_loss",
]
