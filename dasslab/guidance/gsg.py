"""Global Scene Guidance (GSG), Eq. 10 of the paper.

The guide sees the whole noisy image and is scored against the whole label:

    L = CE( g(x_k), y )   counted on every pixel whose label is not ``ignore_index``,

and the reverse step's mean is shifted by ``-lambda * Sigma * grad_x L`` on the
labelled pixels. The loss sees the whole scene (ignore pixels are context for the
guide), but the update is applied only where the label is not ``ignore_index``:
the project's rule for pixels in no class mask (GTA void, classes a source lacks)
is that they receive the unguided sample, under LCG and GSG alike, so a pixel's
translation is only steered towards a label it actually has.

The guide runs in eval mode with frozen weights (gradients are taken with respect
to the image only); see :func:`dasslab.guidance.losses.guide_mode`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dasslab.guidance.losses import Preprocess, SegNet, as_label, guide_mode, segmentation_loss


def gsg_loss_and_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """GSG gradient ``grad_x L`` (shape and dtype of ``x``) and the loss per image (N,, float32, detached).

    ``x``: noisy images N x C x H x W in [-1, 1] scale; ``label``: N x H x W int64 class ids on
    ``x``'s device (checked once by the caller, see :class:`~dasslab.guidance.sgg.SemanticGuidance`).
    Images without a labelled pixel get zero gradient. No host sync.
    """
    with guide_mode(net), torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        terms = segmentation_loss(net(preprocess(x_in)), label, reduction, ignore_index)
        (grad,) = torch.autograd.grad(terms.sum(), x_in)
    grad = grad * (label != ignore_index).unsqueeze(1).to(grad.dtype)
    return grad, terms.detach().float()


def gsg_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
) -> Tensor:
    """GSG guidance gradient ``grad_x CE(g(preprocess(x)), y)`` (Eq. 10), not multiplied by lambda.

    A convenience wrapper that also accepts N x 1 x H x W labels and checks their shape.
    """
    return gsg_loss_and_grad(x, as_label(label, x), preprocess, net, reduction, ignore_index)[0]
