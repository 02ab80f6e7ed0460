"""Domain score: how target-like a set of images is, in a way that noise alone does not fool.

A classifier trained on clean source vs clean target images learns "texture/noise means
target": partly translated images (which keep some of the forward noise of Eq. 2) then
score as target without looking like it. Here the classifier is trained with the *same*
Eq. 2 noise applied to both domains: each training image is, with probability
``noise_p``, replaced by ``q_sample(x0, t, eps)`` with ``t ~ U{0, ..., t_max - 1}``, the
same distribution of t for source and target. Noise then carries no information about
the domain and the classifier must read content (photo texture vs flat colour).

Why a classifier and not a kernel distance (KID): a per-image probability gives a score
in [0, 1] with fixed meaning (0 = every image reads as source, 1 = every image reads as
target), it needs no reference set at scoring time, it is cheap on CPU, and its noise
invariance is built in by training rather than hoped for from a feature extractor.

The score of a set of images is the mean probability of "target" (so one borderline
image moves it a little, not by 1/N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DomainClassifier", "domain_score", "train_domain_classifier"]


class DomainClassifier(nn.Module):
    """A small CNN: image in [-1, 1] -> logit of "target domain"."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers, c = [], 3
        for w in (width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.GroupNorm(8, w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)


def train_domain_classifier(source: torch.Tensor, target: torch.Tensor, q_sample, t_max: int,
                            steps: int = 400, batch_size: int = 64, noise_p: float = 0.5, lr: float = 2e-3,
                            seed: int = 0, device: str | torch.device = "cpu") -> DomainClassifier:
    """Fit source (0) vs target (1) with Eq. 2 noise on both domains; returns it in eval mode.

    Args:
        source, target: (N, 3, H, W) images in [-1, 1].
        q_sample: ``q_sample(x0, t, noise)`` of the diffusion schedule (Eq. 2).
        t_max: noise levels ``t < t_max`` (the deepest translation depth measured).
        noise_p: fraction of each batch (both domains alike) that is noised.
    """
    if len(source) == 0 or len(target) == 0:
        raise ValueError("domain classifier: needs source and target images")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = DomainClassifier().to(device).train()
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    half = batch_size // 2
    y = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
    for _ in range(steps):
        i = torch.randint(len(source), (half,), generator=g)
        j = torch.randint(len(target), (half,), generator=g)
        x = torch.cat([source[i], target[j]])
        noisy = torch.rand(len(x), generator=g) < noise_p
        if noisy.any():
            t = torch.randint(0, int(t_max), (int(noisy.sum()),), generator=g)
            x[noisy] = q_sample(x[noisy], t, torch.randn(x[noisy].shape, generator=g))
        loss = F.binary_cross_entropy_with_logits(clf(x.to(device)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return clf.eval()


@torch.no_grad()
def target_probability(clf: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Per-image probability of "target" (N,)."""
    dev = next(clf.parameters()).device
    return torch.cat([torch.sigmoid(clf(images[i:i + batch_size].to(dev))).cpu()
                      for i in range(0, len(images), batch_size)])


def domain_score(clf: nn.Module, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean probability that ``images`` are target images (0 = source-like, 1 = target-like)."""
    return float(target_probability(clf, images, batch_size).mean())
