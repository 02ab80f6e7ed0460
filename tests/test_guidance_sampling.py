"""SGG inside the DDPM sampler: exactness where guidance must be a no-op, and that it does its job.

Denoisers: the small diffusers UNet (random weights; only exactness is checked with it) and an
analytic per-pixel denoiser, the exact ``E[eps | x_t]`` for data ``x_0 ~ N(m, s^2 I)`` — a
"target domain" of grey noise that washes the source colours out, so unguided translation loses
the label and guidance has something to restore.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dasslab.diffusion import Denoiser, NoiseSchedule, Sampler
from dasslab.guidance import SemanticGuidance

IGNORE = 255
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one intra-op thread


def imagenet_preprocess(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2 - MEAN) / STD


def colour_guide() -> nn.Module:
    """Fixed analytic guide: logit of class c = 2 * (3x3 box mean of normalised channel c).

    It depends on the input (and on a neighbourhood, so LCG and GSG differ at class borders), and
    the label of the source scenes below is recoverable from colour.
    """
    net = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
        for c in range(3):
            net.weight[c, c] = 2.0 / 9
    return net.requires_grad_(True)


class GaussianDenoiser:
    """``E[eps | x_t]`` for ``x_0 ~ N(m, s2 I)``: per-pixel, deterministic, exact for that prior."""

    def __init__(self, alpha_bar: torch.Tensor, m: float = 0.0, s2: float = 0.25):
        self.alpha_bar, self.m, self.s2 = alpha_bar, m, s2

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, 1, 1, 1).to(x)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.m) / (ab * self.s2 + 1 - ab)


def colour_scenes(seed: int, n: int = 4, size: int = 16):
    """Blocks of 3 colour classes (class c = channel c bright), top two rows ignored."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 3, (n, size // 4, size // 4), generator=g)
    label = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2)
    x = F.one_hot(label, 3).permute(0, 3, 1, 2).float() * 1.6 - 0.8
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    label = label.clone()
    label[:, :2] = IGNORE
    return x, label


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.linear()


@pytest.fixture(scope="module")
def unet_sampler(schedule):
    torch.manual_seed(0)
    den = Denoiser.build(16, preset="small").eval()
    return Sampler(schedule, den)


@pytest.fixture(scope="module")
def gauss_sampler(schedule):
    return Sampler(schedule, GaussianDenoiser(schedule.alpha_bar))


def _translate(sampler, x, guidance, seed, depth=300, steps=6):
    return sampler.translate(
        x, depth, steps, guidance=guidance, generator=torch.Generator().manual_seed(seed)
    )


def test_scale_zero_reproduces_unguided_sampler_exactly(unet_sampler):
    x, label = colour_scenes(0, n=2)
    guide = colour_guide()
    unguided = _translate(unet_sampler, x, None, seed=7)
    for kw in (
        {"scale": 0.0},
        {"scale": 0.0, "gsg": False},
        {"scale": 5.0, "lcg": False, "gsg": False},
    ):
        sg = SemanticGuidance(imagenet_preprocess, guide, label, **kw)
        assert torch.equal(_translate(unet_sampler, x, sg, seed=7), unguided)
    # and a guided run from the same seed does differ
    sg = SemanticGuidance(imagenet_preprocess, guide, label, scale=1.0)
    guided = _translate(unet_sampler, x, sg, seed=7)
    assert not torch.equal(guided, unguided)
    assert len(sg.stats) == 6 and [s.kind for s in sg.stats] == ["lcg", "gsg"] * 3
    assert all(s["shift_rms"] > 0 for s in unet_sampler.stats)


def test_all_ignore_label_reproduces_unguided_exactly(unet_sampler):
    x, label = colour_scenes(1, n=2)
    label[:] = IGNORE
    sg = SemanticGuidance(imagenet_preprocess, colour_guide(), label, scale=3.0)
    assert torch.equal(_translate(unet_sampler, x, sg, seed=3), _translate(unet_sampler, x, None, seed=3))


def test_ignore_pixels_equal_unguided_sample_one_unet_step(unet_sampler):
    """With the UNet, one LCG-guided reverse step leaves ignore pixels exactly at mu + sigma z."""
    x, label = colour_scenes(2, n=2)
    sg = SemanticGuidance(imagenet_preprocess, colour_guide(), label, scale=2.0, gsg=False)
    g = _translate(unet_sampler, x, sg, seed=5, depth=200, steps=1)
    u = _translate(unet_sampler, x, None, seed=5, depth=200, steps=1)
    ignore = (label == IGNORE)[:, None].expand_as(g)
    assert torch.equal(g[ignore], u[ignore])
    assert not torch.equal(g[~ignore], u[~ignore])


def test_ignore_pixels_equal_unguided_sample_whole_chain(gauss_sampler):
    """Over a whole LCG-guided chain with a per-pixel denoiser, ignore pixels never move off the unguided path.

    (With a spatial denoiser the guided pixels feed back into their neighbours' noise estimate at
    later steps, so only the first step is exact there; GSG's gradient reaches ignore pixels that
    are context of labelled ones, by design.)
    """
    x, label = colour_scenes(3)
    sg = SemanticGuidance(imagenet_preprocess, colour_guide(), label, scale=1.0, gsg=False)
    g = _translate(gauss_sampler, x, sg, seed=11, depth=400, steps=10)
    u = _translate(gauss_sampler, x, None, seed=11, depth=400, steps=10)
    ignore = (label == IGNORE)[:, None].expand_as(g)
    assert torch.equal(g[ignore], u[ignore])
    assert (g[~ignore] - u[~ignore]).abs().mean() > 1e-2


def _guide_ce(guide, x, label):
    with torch.no_grad():
        return F.cross_entropy(guide(imagenet_preprocess(x)), label, ignore_index=IGNORE).item()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # SGG, alternate
        {"gsg": False},  # LCG only
        {"lcg": False},  # GSG only
        {"arrangement": "randmix", "seed": 1},
        {"reduction": "mean", "scale": 0.3 * 14 * 16},  # mean = sum / counted pixels (14 labelled rows)
        {"calibrate": True, "shift": 0.2, "scale": 1e6},  # calibrated: scale unused
        {"calibrate": True, "shift": 0.2, "gsg": False},
    ],
    ids=["sgg", "lcg_only", "gsg_only", "sgg_randmix", "sgg_mean", "sgg_calibrated", "lcg_calibrated"],
)
def test_guidance_lowers_guide_ce_against_source_label(gauss_sampler, kwargs):
    guide = colour_guide()
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    settings = {"scale": 0.3, **kwargs}
    guided, unguided = [], []
    for seed in range(3):
        x, label = colour_scenes(seed)
        assert _guide_ce(guide, x, label) < 0.2  # the guide reads the source correctly
        sg = SemanticGuidance(imagenet_preprocess, guide, label, **settings)
        out = _translate(gauss_sampler, x, sg, seed=100 + seed, depth=500, steps=10)
        shift = Sampler.shift_summary(gauss_sampler.stats)
        assert shift["guided_steps"] == 10 and len(sg.stats) == 10
        assert 0 < shift["shift_over_sigma_mean"] < 0.5  # a moderate shift, not a takeover
        guided.append(_guide_ce(guide, out, label))
        out = _translate(gauss_sampler, x, None, seed=100 + seed, depth=500, steps=10)
        unguided.append(_guide_ce(guide, out, label))
    mean_g, mean_u = sum(guided) / 3, sum(unguided) / 3
    assert mean_u > 0.8  # unguided translation really loses the label here
    assert mean_g < 0.75 * mean_u, (guided, unguided)
    assert all(p.grad is None for p in guide.parameters())
    assert all(torch.equal(v, before[k]) for k, v in guide.state_dict().items())


def test_guidance_sign_points_downhill(gauss_sampler):
    """A larger lambda lowers the guide's CE further (the sign is descent, not Eq. 7's printed ascent)."""
    guide = colour_guide()
    x, label = colour_scenes(5)
    ces = []
    for scale in (0.0, 0.1, 0.3, 1.0):
        sg = SemanticGuidance(imagenet_preprocess, guide, label, scale=scale)
        ces.append(_guide_ce(guide, _translate(gauss_sampler, x, sg, seed=9, depth=500, steps=10), label))
    assert ces == sorted(ces, reverse=True), ces
