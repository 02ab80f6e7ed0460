"""Target self-training (beyond the paper; DACS / DAFormer style): the pieces, as pure functions.

The adaptation stage can also learn from the unlabeled target images (``adapt.self_training``,
:class:`dasslab.ptl.module.PTLModule`). Per iteration s:

1. the teacher h is an exponential moving average of the segmenter g (weights and BN statistics),

       h_s = alpha_s h_{s-1} + (1 - alpha_s) g_s,   alpha_s = min(1 - 1 / (s + 1), ema)       (EMA)

   (the warm-up term makes h follow g closely while few updates have been averaged);
2. h predicts pseudo-labels on a target image x^T: y_hat = argmax h(x^T), and the image's
   pseudo-labels are weighted by the share of its pixels whose confidence max softmax exceeds tau,

       q = |{p : max_c h(x^T)_{p,c} > tau}| / |x^T|                                            (weight)

3. ClassMix: half of the classes present in a labelled image x (a source image, or its translation
   X^n when PTL translates) are pasted onto the target image,

       M = [y in C_half],  x_mix = M x + (1 - M) x^T,  y_mix = M y + (1 - M) y_hat,
       w_mix = M + (1 - M) q                                                                  (mix)

   (|C_half| = ceil(|C| / 2) of the classes C in y, ignore pixels never pasted);
4. the mixed image is colour-jittered and blurred (the strong augmentation of DACS) and the
   student learns it with the weighted cross-entropy, averaged over all pixels,

       L_st = sum_p w_mix,p CE(g(x_mix)_p, y_mix,p) / |x_mix|                                   (loss)

   (pixels labelled ignore contribute 0).

Randomness (the classes chosen, the augmentation) comes from a generator seeded by (seed, rank,
step): a resumed run draws what the uninterrupted one drew, with nothing extra to checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

__all__ = ["ema_alpha", "ema_update", "pseudo_labels", "classmix_masks", "mix", "strong_augment", "weighted_ce"]


def ema_alpha(step: int, ema: float) -> float:
    """alpha_s = min(1 - 1 / (s + 1), ema): the teacher's decay at iteration s (0 at s = 0: h = g)."""
    return min(1.0 - 1.0 / (int(step) + 1), float(ema))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """h <- alpha h + (1 - alpha) g for every parameter and floating buffer (BN running statistics);
    integer buffers (BN's batch counter) are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.is_floating_point():
            t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
        else:
            t.copy_(s)


@torch.no_grad()
def pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(y_hat (B, H, W), q (B,)): the teacher's argmax and each image's share of pixels above ``threshold``."""
    conf, labels = logits.float().softmax(dim=1).max(dim=1)
    q = (conf > float(threshold)).flatten(1).float().mean(dim=1)
    return labels, q


def classmix_masks(labels: Tensor, generator: torch.Generator, ignore_index: int = 255) -> Tensor:
    """M (B, H, W) bool: the pixels of ceil(|C| / 2) classes drawn from the classes C present in each label
    map (ignore pixels excluded; an image without a labelled pixel pastes nothing)."""
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, y in enumerate(labels):
        classes = torch.unique(y)
        classes = classes[classes != ignore_index]
        if classes.numel() == 0:
            continue
        k = math.ceil(classes.numel() / 2)
        chosen = classes[torch.randperm(classes.numel(), generator=generator, device="cpu")[:k].to(classes.device)]
        masks[i] = torch.isin(y, chosen)
    return masks


def mix(image: Tensor, label: Tensor, target: Tensor, pseudo: Tensor, q: Tensor, mask: Tensor
        ) -> tuple[Tensor, Tensor, Tensor]:
    """(x_mix, y_mix, w_mix): the labelled image's masked pixels over the target image; labels from the label
    map where pasted, from the pseudo-labels elsewhere; weight 1 where pasted, q (per image) elsewhere."""
    m = mask[:, None].to(image.dtype)
    x = m * image + (1.0 - m) * target
    y = torch.where(mask, label, pseudo)
    w = torch.where(mask, torch.ones_like(q)[:, None, None], q[:, None, None].expand_as(mask).to(q.dtype))
    return x, y, w


def strong_augment(images: Tensor, generator: torch.Generator, jitter: float = 0.2, p_jitter: float = 0.2,
                   blur: bool = True, p_blur: float = 0.5) -> Tensor:
    """DACS's augmentation of mixed images in [-1, 1]: with probability ``p_jitter`` a colour jitter of strength
    ``jitter`` (brightness, contrast, saturation in [1 - s, 1 + s], hue in [-s / 4, s / 4]), with probability
    ``p_blur`` a Gaussian blur (sigma in [0.15, 1.15], kernel ~ 10 % of the shorter side, odd)."""
    out = []
    side = min(images.shape[-2:])
    kernel = max(3, int(math.ceil(0.1 * side)) // 2 * 2 + 1)
    for img in images:
        u = torch.rand(7, generator=generator).tolist()
        x = (img.clamp(-1, 1) + 1.0) * 0.5
        if jitter > 0 and u[0] < p_jitter:
            x = TF.adjust_brightness(x, 1.0 + jitter * (2 * u[1] - 1))
            x = TF.adjust_contrast(x, 1.0 + jitter * (2 * u[2] - 1))
            x = TF.adjust_saturation(x, 1.0 + jitter * (2 * u[3] - 1))
            x = TF.adjust_hue(x, jitter / 4 * (2 * u[4] - 1))
        if blur and u[5] < p_blur:
            sigma = 0.15 + u[6]
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        out.append(x * 2.0 - 1.0)
    return torch.stack(out)


def weighted_ce(logits: Tensor, label: Tensor, weight: Tensor, ignore_index: int = 255) -> Tensor:
    """sum_p w_p CE_p / (number of pixels): the confidence-weighted cross-entropy (ignore pixels give 0)."""
    ce = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="none")
    return (weight * ce).mean()
