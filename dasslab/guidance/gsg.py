"""Global Scene Guidance (GSG), Eq. 10 of the paper.

The guide sees the whole noisy image and is scored against the whole label:

    L = CE( g(x_k), y )   counted on every pixel whose label is not ``ignore_index``,

and the reverse step's mean is shifted by ``-lambda * Sigma * grad_x L``. Unlike
LCG, the gradient is not confined to labelled pixels: a pixel with the ignore
label still receives gradient through the guide's receptive field when it is
context for labelled pixels (that is what "global scene" guidance means).

The guide runs in eval mode with frozen weights (gradients are taken with respect
to the image only); see :func:`dasslab.guidance.losses.guide_mode`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dasslab.guidance.losses import (
    Preprocess,
    SegNet,
    as_label,
    check_reduction,
    guide_mode,
    segmentation_loss,
)


def gsg_loss_and_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """GSG gradient ``grad_x L`` (shape and dtype of ``x``) and the loss per image (N,, float32, detached).

    ``x``: noisy images N x C x H x W in [-1, 1] scale; ``label``: N x H x W (or
    N x 1 x H x W) class ids. Images without a labelled pixel get zero gradient;
    a batch without any labelled pixel does not call the guide.
    """
    check_reduction(reduction)
    label = as_label(label, x)
    n = x.shape[0]
    if not bool((label != ignore_index).any()):
        return torch.zeros_like(x), torch.zeros(n, device=x.device, dtype=torch.float32)
    with guide_mode(net), torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        terms = segmentation_loss(net(preprocess(x_in)), label, reduction, ignore_index)
        (grad,) = torch.autograd.grad(terms.sum(), x_in)
    return grad, terms.detach().float()


def gsg_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
) -> Tensor:
    """GSG guidance gradient ``grad_x CE(g(preprocess(x)), y)`` (Eq. 10), not multiplied by lambda."""
    return gsg_loss_and_grad(x, label, preprocess, net, reduction, ignore_index)[0]
