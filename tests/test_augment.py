"""Appendix C noisy + masked augmentation."""

import torch

from dasslab.diffusion.schedule import NoiseSchedule
from dasslab.segmentation.augment import noisy_masked


def batch(n=6):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    y = torch.randint(0, 4, (n, 8, 8), generator=g)
    y[:, 0] = 255
    return x, y


def test_p0_changes_nothing():
    s = NoiseSchedule.linear()
    x, y = batch()
    x2, y2, keep = noisy_masked(x, y, s.q_sample, 1000, p=0.0)
    assert keep is None and torch.equal(x2, x) and torch.equal(y2, y)


def test_p1_noises_every_sample_and_keeps_one_class_each():
    s = NoiseSchedule.linear()
    x, y = batch()
    g = torch.Generator().manual_seed(1)
    x2, y2, keep = noisy_masked(x, y, s.q_sample, 1000, p=1.0, t_max=600, generator=g)
    assert not torch.allclose(x2, x)
    for i in range(len(x)):
        kept = torch.unique(y2[i][y2[i] != 255])
        assert len(kept) == 1                               # exactly one class region survives
        region = y[i] == kept[0]
        assert torch.equal(keep[i, 0].bool(), region)       # the input mask is that region
        assert torch.equal(y2[i][region], y[i][region])     # labels inside are unchanged
        assert (y2[i][~region] == 255).all()                # outside: ignored, not class 0
    # inputs are not modified in place
    assert torch.equal(batch()[0], x)


def test_noise_level_follows_eq2():
    """With t fixed near T the noisy image is almost pure noise; near 0 almost the image."""
    s = NoiseSchedule.linear()
    x = torch.zeros(256, 3, 8, 8)
    y = torch.zeros(256, 8, 8, dtype=torch.long)
    low, _, _ = noisy_masked(x + 0.5, y, s.q_sample, 1000, p=1.0, t_max=1, mask=False)
    assert torch.allclose(low, torch.full_like(low, 0.5), atol=0.06)   # t = 0: sqrt(1 - ab_0) = 0.01
    x2, _, _ = noisy_masked(x, y, s.q_sample, 1000, p=1.0, t_max=1000, mask=False)
    assert 0.3 < x2.std() < 1.0
