"""Appendix C augmentation: noise and mask drawn independently."""

import pytest
import torch

from dasslab.diffusion.schedule import NoiseSchedule
from dasslab.errors import ConfigError
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
    x2, y2, keep = noisy_masked(x, y, s.q_sample, 1000, p=0.0, mask_p=0.0)
    assert keep is None and torch.equal(x2, x) and torch.equal(y2, y)


def test_mask_only_keeps_one_class_each_and_leaves_pixels_clean():
    s = NoiseSchedule.linear()
    x, y = batch()
    g = torch.Generator().manual_seed(1)
    x2, y2, keep = noisy_masked(x, y, s.q_sample, 1000, p=0.0, mask_p=1.0, generator=g)
    assert torch.equal(x2, x)                               # masking alone does not noise
    for i in range(len(x)):
        kept = torch.unique(y2[i][y2[i] != 255])
        assert len(kept) == 1                               # exactly one class region survives
        region = y[i] == kept[0]
        assert torch.equal(keep[i, 0].bool(), region)       # the input mask is that region
        assert torch.equal(y2[i][region], y[i][region])     # labels inside are unchanged
        assert (y2[i][~region] == 255).all()                # outside: ignored, not class 0
    assert torch.equal(batch()[0], x) and torch.equal(batch()[1], y)   # inputs not modified in place


def test_noise_only_keeps_labels_and_no_mask():
    s = NoiseSchedule.linear()
    x, y = batch()
    x2, y2, keep = noisy_masked(x, y, s.q_sample, 1000, p=1.0, mask_p=0.0, t_max=600,
                                generator=torch.Generator().manual_seed(2))
    assert keep is None and torch.equal(y2, y)
    assert not torch.isclose(x2, x).all(dim=(1, 2, 3)).any()  # every sample noised


def test_noise_and_mask_are_drawn_independently():
    """Over many samples all four kinds occur with the product probabilities."""
    s = NoiseSchedule.linear()
    n = 4000
    x = torch.zeros(n, 3, 4, 4)
    y = torch.zeros(n, 4, 4, dtype=torch.long)
    y[:, :, 2:] = 1                                         # two classes per sample: a mask shows
    x2, _, keep = noisy_masked(x, y, s.q_sample, 1000, p=0.5, mask_p=0.3, t_max=1000,
                               generator=torch.Generator().manual_seed(3))
    noised = (x2 != 0).flatten(1).any(1)
    masked = (keep != 1).flatten(1).any(1)
    for a, b, expected in ((True, True, 0.15), (True, False, 0.35), (False, True, 0.15), (False, False, 0.35)):
        frac = ((noised == a) & (masked == b)).float().mean().item()
        assert abs(frac - expected) < 0.03, (a, b, frac)


def test_noise_level_follows_eq2_and_t_max_bounds_it():
    """t < t_max: with t_max = 1 the noisy image is almost the image (sqrt(1 - ab_0) = 0.01)."""
    s = NoiseSchedule.linear()
    x = torch.zeros(256, 3, 8, 8)
    y = torch.zeros(256, 8, 8, dtype=torch.long)
    low, _, _ = noisy_masked(x + 0.5, y, s.q_sample, 1000, p=1.0, t_max=1)
    assert torch.allclose(low, torch.full_like(low, 0.5), atol=0.06)
    mid, _, _ = noisy_masked(x, y, s.q_sample, 1000, p=1.0, t_max=300, generator=torch.Generator().manual_seed(4))
    full, _, _ = noisy_masked(x, y, s.q_sample, 1000, p=1.0, t_max=1000, generator=torch.Generator().manual_seed(4))
    # q_sample(0, t) = sqrt(1 - alphabar_t) eps, increasing in t: a lower t_max means less noise,
    # never more than at t = t_max - 1
    assert mid.std() < full.std()
    assert mid.std().item() <= s.sqrt_one_minus_alpha_bar[299].item() + 0.02


@pytest.mark.parametrize("kw", [{"t_max": 0}, {"t_max": 1001}, {"p": 1.5}, {"mask_p": -0.1}])
def test_bad_settings_name_the_setting(kw):
    """A ConfigError (a ValueError) naming the setting."""
    s = NoiseSchedule.linear()
    x, y = batch()
    with pytest.raises(ConfigError, match="augment."):
        noisy_masked(x, y, s.q_sample, 1000, **kw)
