"""The guide's segmentation loss and the conventions shared by LCG and GSG.

Semantic Gradient Guidance (SGG, Sec. 4.2 of the paper) shifts the mean of each
reverse step by ``-lambda * Sigma * grad_x L`` where ``L`` is a per-pixel
cross-entropy of a frozen *guide* segmenter ``g`` against the source label.
This module computes that loss.

Reduction (the paper does not say which one it used)
----------------------------------------------------
``reduction="sum"`` (our default)
    ``L = sum_p CE_p`` over the *counted* pixels of one term (pixels whose label
    is not ``ignore_index``). This is the analogue of classifier guidance's
    ``log p(y | x)`` of a whole image (Dhariwal & Nichol, guided-diffusion): a
    segmentation label is one categorical per pixel, so the image log-likelihood
    is the sum of the per-pixel log-probabilities. The gradient a pixel receives
    does not depend on how many other pixels are counted, so one lambda means
    the same thing for a large and a small class, and for a small and a large
    image *per pixel*.
``reduction="mean"``
    ``L = mean_p CE_p`` over the counted pixels of each term (torch's
    ``cross_entropy(..., reduction="mean")`` applied to each term on its own).
    Every pixel's gradient is divided by the term's pixel count, so
    ``lambda_mean ~= lambda_sum * (#counted pixels)``: for GSG on a fully
    labelled H x W image, ``lambda_mean = lambda_sum * H * W``; for LCG each class
    term is divided by its own area, so small classes are pushed harder.

How terms add up: a *term* is one image (GSG) or one (image, class) pair (LCG).
Terms are reduced on their own and then summed, never averaged over the batch:
the guidance an image receives must not depend on what else is in the batch
(the same reason guided-diffusion sums the per-image log-probs).

Whatever the reduction, lambda is tied to it and to the resolution; the
sampler-side quantity that transfers is the shift ``||lambda Sigma grad||``
relative to ``sigma_k``, which :class:`dasslab.guidance.sgg.SemanticGuidance`
logs, and which its calibrated mode (``guidance.calibrate``) sets directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("sum", "mean")

#: ``preprocess(x)``: images in [-1, 1] (N x C x H x W) -> the segmenter's input space.
Preprocess = Callable[[Tensor], Tensor]
#: ``net(z)``: segmenter input (N x C' x H x W) -> logits N x K x H x W.
SegNet = Callable[[Tensor], Tensor]


def as_label(label: Tensor, x: Tensor) -> Tensor:
    """Return ``label`` as an N x H x W int64 tensor on ``x``'s device, checking its shape.

    Accepts N x H x W or N x 1 x H x W integer tensors.
    """
    if not isinstance(label, Tensor):
        raise TypeError(f"guidance label must be a torch.Tensor, got {type(label).__name__}")
    if label.dim() == 4 and label.shape[1] == 1:
        label = label[:, 0]
    if label.dtype.is_floating_point or label.dtype == torch.bool:
        raise TypeError(
            f"guidance label must be an integer tensor (class index, 255 = ignore), got {label.dtype}"
        )
    if x.dim() != 4:
        raise ValueError(f"guidance expects images N x C x H x W, got shape {tuple(x.shape)}")
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if label.dim() != 3 or tuple(label.shape) != expected:
        raise ValueError(
            f"guidance label must have shape N x H x W = {expected} to match images {tuple(x.shape)}, "
            f"got {tuple(label.shape)}"
        )
    return label.to(device=x.device, dtype=torch.long)


def pixel_ce(logits: Tensor, target: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Per-pixel cross-entropy and the mask of counted pixels.

    ``logits``: N x K x h x w; if (h, w) differs from the label's size the logits
    are bilinearly resized to it first (a segmenter whose head is at 1/8 scale
    still works). ``target``: N x H x W int64, ``ignore_index`` = not counted.
    Returns ``(ce, valid)``, both N x H x W; ``ce`` is 0 where not counted.
    Labels are not checked here (that would cost a host sync per reverse step):
    :class:`~dasslab.guidance.sgg.SemanticGuidance` checks them once per batch.
    """
    if logits.dim() != 4:
        raise ValueError(f"guide logits must be N x K x H x W, got shape {tuple(logits.shape)}")
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    valid = target != ignore_index
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    return ce, valid


def reduce_terms(ce: Tensor, valid: Tensor, reduction: str = "sum") -> Tensor:
    """Reduce per-pixel CE (N x H x W) to one loss per term (N,), see the module docstring.

    A term without counted pixels has loss 0 under both reductions.
    """
    total = ce.flatten(1).sum(1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / valid.flatten(1).sum(1).clamp_min(1).to(total.dtype)
    raise ValueError(f"guidance reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


def segmentation_loss(
    logits: Tensor, target: Tensor, reduction: str = "sum", ignore_index: int = 255
) -> Tensor:
    """Cross-entropy of ``logits`` (N x K x H x W) against ``target`` (N x H x W), one value per term (N,)."""
    ce, valid = pixel_ce(logits, target, ignore_index)
    return reduce_terms(ce, valid, reduction)


@contextlib.contextmanager
def guide_mode(net: SegNet) -> Iterator[None]:
    """Run the guide in eval mode and restore each submodule's train/eval flag afterwards.

    Eval mode matters beyond dropout: LCG stacks the class copies of several
    images along the batch dimension, which is only correct if every sample's
    output depends on that sample alone (BatchNorm with running statistics).
    If ``net`` is not an ``nn.Module`` (a plain function or a bound method), the
    caller is responsible for that, and nothing is changed.
    The guide's weights are never modified and never get a ``.grad``: gradients
    are taken with ``torch.autograd.grad`` with respect to the image only.
    """
    module = net if isinstance(net, nn.Module) else getattr(net, "__self__", None)
    if not isinstance(module, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training
