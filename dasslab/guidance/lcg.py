"""Local Class-regional Guidance (LCG), Eq. 6-9 of the paper, batched.

For every class ``c`` present in the source label ``y`` of an image, the paper
masks the noisy image with the class's region ``m_c``, asks the guide for the
cross-entropy restricted to that region,

    L_c = CE( g(x_k * m_c), y )   counted only on pixels of m_c,

takes one guided reverse step per class (Eq. 7) and pastes the per-class results
back together with the masks (Eq. 9). Because the masks are disjoint and the
denoiser's mean ``mu_theta(x_k, k)`` does not depend on ``c``,

    sum_c m_c * x_{k-1,c} = mu - lambda Sigma sum_c m_c * grad_x L_c + sigma z,

so a single step with the guidance gradient ``G = sum_c m_c * grad_x L_c`` is
exactly the paper's procedure. This module computes ``G``:

* all (image, class) pairs of the batch are built as masked copies
  ``preprocess(x)[i] * m_{i,c}`` (the mask is applied in the segmenter's input
  space, after its normalisation, so a masked pixel is the segmenter's "zero"
  input, e.g. the ImageNet mean colour), stacked along the batch dimension and
  sent through the guide in ONE forward and ONE backward pass;
* each copy's loss counts only its own class pixels; all other pixels carry the
  ignore label (they are *not* treated as class 0 / background);
* autograd through the multiplication by the mask gives ``m_c * grad L_c`` per
  copy and the gather ``preprocess(x)[i]`` sums the copies of image ``i``: the
  result is exactly ``sum_c m_c * grad_x L_c``.

**LCG with context** (``context=True``, ``guidance.lcg_input: whole``; not in the paper): each copy
shows the guide the *whole* image, the loss still counts only the class's pixels and the gradient is
still taken on the class region only — the copy is ``where(m_c, z, stop_grad(z))``, equal to ``z``
in value, so autograd gives ``m_c * grad_x L_c(x)`` with L_c read in the scene's context. On scenes
where a region's outline alone tells its class (the digits benchmark: the masked copy's silhouette
carries the label), the masked input cannot guide what is inside the region; the whole input can.

Pixels in no class mask (the ignore label, e.g. GTA5 void or classes a source
lacks) get a zero gradient, hence the *unguided* sample ``mu + sigma z``
(Eq. 9 read literally would set them to 0). An image without any labelled pixel
gets a zero gradient.

Memory: the guide keeps its activations for every copy of a pass (DeepLab-V2 R101: about 1.2 GB
per 256x512 copy in fp32), so the copies go through it in chunks of ``max_batch``
(``guidance.max_batch``): an int, ``None``/``all`` for one pass, or ``auto`` —
:func:`auto_max_batch`: one pass on CPU; on CUDA as many copies as fit in
``AUTO_MEMORY_FRACTION`` of the free memory, from a per-copy estimate measured once per guide
and input size (a forward of one copy, times ``BACKWARD_FACTOR``). The result does not depend on
the chunking (tested).

Requirements on the guide: ``preprocess`` works pixel-wise and keeps H x W (a
normalisation, not a resize), and ``net`` treats batch samples independently
(eval mode: BatchNorm with running statistics). ``nn.Module`` guides are put in
eval mode for the call and restored afterwards; see
:func:`dasslab.guidance.losses.guide_mode`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from dasslab.guidance.losses import Preprocess, SegNet, as_label, guide_mode, segmentation_loss


@dataclass(frozen=True)
class ClassCopies:
    """The (image, class) pairs of a label batch, ordered by image then class.

    ``image_index`` (P,) and ``classes`` (P,) name the pairs; ``masks`` (P x 1 x H x W,
    bool) are the class regions m_c; ``targets`` (P x H x W, int64) hold the class
    inside its region and ``ignore_index`` elsewhere.
    """

    image_index: Tensor
    classes: Tensor
    masks: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.image_index.numel())


def class_copies(label: Tensor, ignore_index: int = 255) -> ClassCopies:
    """Enumerate the (image, class) pairs present in ``label`` (N x H x W int) with their masks.

    Depends only on the label, so a caller that guides many steps with the same
    label (:class:`~dasslab.guidance.sgg.SemanticGuidance`) builds it once.
    """
    if label.dim() != 3:
        raise ValueError(f"label must be N x H x W, got shape {tuple(label.shape)}")
    label = label.long()
    n = label.shape[0]
    valid = label != ignore_index
    if bool((label[valid] < 0).any()):
        raise ValueError(f"guidance label holds negative class ids (ignore index is {ignore_index})")
    if not bool(valid.any()):
        empty = label.new_zeros(0)
        return ClassCopies(
            empty,
            empty,
            label.new_zeros((0, 1, *label.shape[1:]), dtype=torch.bool),
            label.new_zeros((0, *label.shape[1:])),
        )
    width = int(label[valid].max()) + 1
    image_of_pixel = torch.arange(n, device=label.device).view(n, 1, 1).expand_as(label)
    keys = torch.unique(image_of_pixel[valid] * width + label[valid])  # sorted: by image, then class
    image_index = keys // width
    classes = keys % width
    masks = label[image_index] == classes.view(-1, 1, 1)
    targets = torch.where(
        masks, classes.view(-1, 1, 1), torch.full_like(masks, ignore_index, dtype=torch.long)
    )
    return ClassCopies(image_index, classes, masks.unsqueeze(1), targets)


def lcg_loss_and_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
    max_batch: int | None = None,
    copies: ClassCopies | None = None,
    context: bool = False,
) -> tuple[Tensor, Tensor]:
    """LCG gradient ``sum_c m_c * grad_x L_c`` (shape and dtype of ``x``) and the loss per image (N,).

    ``x``: noisy images N x C x H x W in [-1, 1] scale; ``label``: N x H x W int64 class ids,
    ``ignore_index`` = no guidance. The per-image loss is ``sum_c L_c`` of that image's classes
    (float32, detached). ``copies`` may pass a precomputed :func:`class_copies` of ``label``
    (then this function makes no host sync).

    ``max_batch`` bounds how many masked copies go through the guide at once (memory;
    :func:`auto_max_batch` picks it from free GPU memory). Chunking changes nothing in the
    result: each copy's loss depends on that copy alone, so the per-chunk gradients add up to
    the one-batch gradient (equal up to floating-point summation order). ``None`` = all copies.
    ``context``: the guide sees the whole image in every copy (LCG with context, module docstring).
    """
    if copies is None:
        copies = class_copies(label, ignore_index)
    n = x.shape[0]
    grad = torch.zeros_like(x)
    loss = torch.zeros(n, device=x.device, dtype=torch.float32)
    total = len(copies)
    if total == 0:
        return grad, loss
    chunk = total if max_batch is None else max(1, int(max_batch))
    with guide_mode(net), torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        z = preprocess(x_in)
        if z.dim() != 4 or z.shape[0] != n or z.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"guide preprocess must keep N and H x W (pixel-wise normalisation): {tuple(x.shape)} -> "
                f"{tuple(z.shape)}"
            )
        for start in range(0, total, chunk):
            part = slice(start, start + chunk)
            index = copies.image_index[part]
            if context:   # the whole image in value, gradient only through the class region
                zi = z[index]
                masked = torch.where(copies.masks[part], zi, zi.detach())
            else:
                masked = z[index] * copies.masks[part].to(z.dtype)
            terms = segmentation_loss(net(masked), copies.targets[part], reduction, ignore_index)
            last = start + chunk >= total
            (g,) = torch.autograd.grad(terms.sum(), x_in, retain_graph=not last)
            grad += g
            loss.index_add_(0, index, terms.detach().float())
    return grad, loss


def lcg_grad(
    x: Tensor,
    label: Tensor,
    preprocess: Preprocess,
    net: SegNet,
    reduction: str = "sum",
    ignore_index: int = 255,
    max_batch: int | None = None,
) -> Tensor:
    """LCG guidance gradient ``sum_c m_c * grad_x L_c`` (Eq. 6-9), see :func:`lcg_loss_and_grad`.

    Not multiplied by lambda; the guided step shifts the mean by ``-lambda * Sigma * grad``.
    A convenience wrapper that also accepts N x 1 x H x W labels and checks their shape.
    """
    return lcg_loss_and_grad(x, as_label(label, x), preprocess, net, reduction, ignore_index, max_batch)[0]


# ----------------------------------------------------------------------------- max_batch: auto
#: Fraction of the free memory that LCG copies may fill (the rest: the denoiser, allocator slack).
AUTO_MEMORY_FRACTION = 0.7
#: The backward pass needs about as much again as the activations a forward keeps for it.
BACKWARD_FACTOR = 2.0
_BYTES_PER_COPY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def copies_that_fit(free_bytes: int, bytes_per_copy: int, total: int,
                    fraction: float = AUTO_MEMORY_FRACTION) -> int:
    """How many LCG copies one guide pass may hold: ``floor(fraction * free / per copy)`` in [1, total]."""
    if total < 1:
        return 1
    if bytes_per_copy <= 0:
        return total
    return max(1, min(total, int(fraction * free_bytes // bytes_per_copy)))


def free_cuda_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device``: free device memory plus the allocator's
    cached-but-unused blocks, capped by ``torch.cuda.set_per_process_memory_fraction`` if set."""
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    cap = torch.cuda.get_per_process_memory_fraction(device) * total - torch.cuda.memory_allocated(device)
    return int(max(0, min(free + cached, cap)))


def bytes_per_copy(x: Tensor, copies: ClassCopies, preprocess: Preprocess, net: SegNet) -> int:
    """Estimated guide memory of one LCG copy (forward activations kept for backward x BACKWARD_FACTOR).

    Measured once per guide and input size/dtype on CUDA by a forward of one copy, then cached.
    """
    owner = net if isinstance(net, torch.nn.Module) else getattr(net, "__self__", net)
    key = (tuple(x.shape[1:]), x.dtype, torch.is_autocast_enabled(x.device.type), str(x.device))
    try:
        cache = _BYTES_PER_COPY.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: measure every time
        cache = {}
    if key not in cache:
        with guide_mode(net), torch.enable_grad():
            before = torch.cuda.memory_allocated(x.device)
            x_in = x[:1].detach().requires_grad_(True)
            out = net(preprocess(x_in) * copies.masks[:1].to(x.dtype))
            kept = torch.cuda.memory_allocated(x.device) - before
            del out, x_in
        cache[key] = int(BACKWARD_FACTOR * max(kept, 1))
    return cache[key]


def auto_max_batch(x: Tensor, copies: ClassCopies, preprocess: Preprocess, net: SegNet) -> int:
    """``max_batch: auto``: all copies at once on CPU; on CUDA as many as fit in free memory."""
    if x.device.type != "cuda" or len(copies) == 0:
        return max(1, len(copies))
    per_copy = bytes_per_copy(x, copies, preprocess, net)
    return copies_that_fit(free_cuda_memory(x.device), per_copy, len(copies))
