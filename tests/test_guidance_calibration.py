"""Calibrated lambda (``guidance.calibrate``): the mean moves by ``shift * sigma_k`` at any resolution.

Measured from the sampler's output, not from the guidance's own bookkeeping: one reverse step
guided and unguided with the same noise differ by exactly the mean shift ``lambda Sigma G``.
(That guidance still lowers the guide's CE in calibrated mode is in test_guidance_sampling.py.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dasslab.diffusion import NoiseSchedule, Sampler
from dasslab.guidance import SemanticGuidance, validate_guidance

IGNORE = 255
K = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one intra-op thread


def guide() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 3, padding=1)).eval()


def scenes(h: int, w: int, seed: int = 0, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, h, w, generator=g) * 2 - 1
    label = torch.randint(0, K, (3, h // 4, w // 4), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    if ignore:
        label[:, : h // 4] = IGNORE      # a band of ignore pixels
        label[2, :, : w // 2] = IGNORE   # and an image that is half ignore
    return x, label


def denoiser(x, t):
    return 0.2 * x  # any fixed eps_theta: the step's difference guided - unguided does not depend on it


@pytest.mark.parametrize("size", [(32, 32), (64, 128)], ids=["32x32", "64x128"])
@pytest.mark.parametrize("kind", ["lcg", "gsg"])
def test_one_step_shift_equals_target_fraction_of_sigma(size, kind):
    sched = NoiseSchedule.linear()
    sampler = Sampler(sched, denoiser)
    x, label = scenes(*size)
    settings = validate_guidance({"calibrate": True, "shift": 0.15, "lcg": kind == "lcg", "gsg": kind == "gsg"})
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for j in (20, 400, 900):
        sg = SemanticGuidance(lambda v: v, guide(), label, settings)
        guided = sampler.reverse_step(x, j, sched, guidance=sg, z=z)
        plain = sampler.reverse_step(x, j, sched, z=z)
        d = guided - plain
        sigma = float(sched.betas[j]) ** 0.5
        labelled = (label != IGNORE)[:, None].expand_as(d)
        for i in range(3):
            rms = d[i][labelled[i]].pow(2).mean().sqrt() / sigma
            assert float(rms) == pytest.approx(0.15, rel=2e-3), (size, kind, j, i)
        assert torch.all(d[~labelled] == 0)  # ignore pixels: the unguided sample, exactly
        assert sg.stats[0].shift_over_sigma == pytest.approx(0.15, rel=2e-3)


@pytest.mark.parametrize("size", [(32, 32), (64, 128)], ids=["32x32", "64x128"])
def test_whole_chain_reports_the_target_at_every_step(size):
    """Sampler.stats (RMS over all pixels) reads the target exactly when no pixel is ignored."""
    sched = NoiseSchedule.linear()
    sampler = Sampler(sched, denoiser)
    x, label = scenes(*size, seed=1, ignore=False)
    sg = SemanticGuidance(lambda v: v, guide(), label, calibrate=True, shift=0.05)
    sampler.translate(x, 300, 6, guidance=sg, generator=torch.Generator().manual_seed(0))
    assert [s["step"] for s in sampler.stats] == list(range(6))
    assert [s["shift_over_sigma"] for s in sampler.stats] == pytest.approx([0.05] * 6, rel=2e-3)
    assert [s.kind for s in sg.stats] == ["lcg", "gsg"] * 3
    assert [s.shift_over_sigma for s in sg.stats] == pytest.approx([0.05] * 6, rel=2e-3)
    # lambda differs per step: it is what calibration computes, not a constant
    lams = [s.scale for s in sg.stats]
    assert len({round(v, 3) for v in lams}) > 1 and all(v > 0 for v in lams)
