"""What goes beyond the paper's guided step, checked against closed forms and reference loops.

* the reverse variance kinds of a respaced chain (beta, the posterior beta~, their interpolation);
* LCG with context (``lcg_input: whole``): the batched copies equal a per-class loop in which each
  class's loss is taken on the whole image and its gradient kept on the class region only;
* guidance on x0_hat (``on: x0``), with eps held fixed or differentiated through the denoiser,
  equal to autograd of the composed map;
* both lower the guide's loss against the source label inside a real sampling chain.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dasslab.diffusion import NoiseSchedule, Sampler
from dasslab.diffusion.sampler import StepContext
from dasslab.diffusion.schedule import spaced_steps
from dasslab.errors import ConfigError
from dasslab.guidance import SemanticGuidance, validate_guidance
from dasslab.guidance.lcg import lcg_loss_and_grad
from tests.test_guidance import IGNORE, TinyGuide, imagenet_preprocess, make_batch
from tests.test_guidance_sampling import GaussianDenoiser, _guide_ce, colour_guide, colour_scenes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ reverse variances
def test_reverse_variances_closed_forms():
    full = NoiseSchedule.linear()
    sched = full.respace(spaced_steps(600, 10))
    b = sched.betas64
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=b.dtype), ab[:-1]])
    post = b * (1 - ab_prev) / (1 - ab)
    assert torch.equal(sched.reverse_variances("beta"), b)
    got = sched.reverse_variances("posterior")
    torch.testing.assert_close(got[1:], post[1:])
    assert got[0] == post[1]                       # clipped at j = 0, where beta~ is 0
    torch.testing.assert_close(sched.reverse_variances(1.0), b)
    torch.testing.assert_close(sched.reverse_variances(0.0), got)
    torch.testing.assert_close(sched.reverse_variances(0.5), (b * got).sqrt())   # geometric mean
    # on a respaced chain the posterior is far below beta near the clean end; every step kept: nearly equal
    assert got[1] < 0.01 * b[1] and got[3] < 0.6 * b[3]
    dense = full.reverse_variances("posterior")[1:]
    assert float((dense / full.betas64[1:])[100:].min()) > 0.98
    for bad in ("small", -0.1, 1.5, True):
        with pytest.raises(ValueError, match="reverse variance"):
            sched.reverse_variances(bad)


def test_reverse_step_uses_the_chosen_variance():
    sched = NoiseSchedule.linear().respace(spaced_steps(400, 5))
    sampler = Sampler(sched, lambda x, t: torch.zeros_like(x))   # eps = 0: mu is a fixed rescaling of x
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    j = 3
    mu = sched.p_mean(x, j, torch.zeros_like(x))
    for kind in ("beta", "posterior", 0.5):
        var = float(sched.reverse_variances(kind)[j])
        out = sampler.reverse_step(x, j, sched, z=z, variance=kind)
        torch.testing.assert_close(out, mu + math.sqrt(var) * z)
        assert sampler.stats[-1]["sigma"] == pytest.approx(math.sqrt(var))


def test_translate_default_variance_is_the_papers():
    sched = NoiseSchedule.linear()
    sampler = Sampler(sched, GaussianDenoiser(sched.alpha_bar))
    x, _ = colour_scenes(0, n=2)
    a = sampler.translate(x, 300, 6, generator=torch.Generator().manual_seed(3))
    b = sampler.translate(x, 300, 6, generator=torch.Generator().manual_seed(3), variance="beta")
    c = sampler.translate(x, 300, 6, generator=torch.Generator().manual_seed(3), variance="posterior")
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------ LCG with context
def lcg_context_loop(x, label, preprocess, net, reduction="sum"):
    """Reference: for every (image, class) the loss on the WHOLE image restricted to the class pixels,
    its gradient kept on the class region (one autograd call per pair; the guide in eval mode)."""
    net.eval()
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for c in torch.unique(label[i]).tolist():
            if c == IGNORE:
                continue
            xi = x[i:i + 1].detach().requires_grad_(True)
            target = torch.where(label[i:i + 1] == c, label[i:i + 1], torch.full_like(label[i:i + 1], IGNORE))
            ce = F.cross_entropy(net(preprocess(xi)), target, ignore_index=IGNORE, reduction="none")
            valid = target != IGNORE
            loss = ce[valid].sum() if reduction == "sum" else ce[valid].mean()
            (g,) = torch.autograd.grad(loss, xi)
            out[i] += g[0] * (label[i] == c).to(g.dtype)
    return out


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_lcg_with_context_equals_per_class_loop(reduction):
    guide = TinyGuide()
    x, label = make_batch()
    ref = lcg_context_loop(x, label, imagenet_preprocess, guide, reduction)
    got, _ = lcg_loss_and_grad(x, label, imagenet_preprocess, guide, reduction, IGNORE, context=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    masked, _ = lcg_loss_and_grad(x, label, imagenet_preprocess, guide, reduction, IGNORE)
    assert not torch.allclose(got, masked)           # the context changes what the guide reads
    assert torch.all(got[(label == IGNORE)[:, None].expand_as(got)] == 0)
    chunked, _ = lcg_loss_and_grad(x, label, imagenet_preprocess, guide, reduction, IGNORE, max_batch=3,
                                   context=True)
    torch.testing.assert_close(chunked, got, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ guidance on x0_hat
def _context(x, sched, j, denoiser):
    t = torch.full((x.shape[0],), sched.timestep(j), dtype=torch.long)
    with torch.no_grad():
        eps = denoiser(x, t)
    return StepContext(eps, t, sched.sqrt_alpha_bar[j], sched.sqrt_one_minus_alpha_bar[j], denoiser)


@pytest.mark.parametrize("through", [False, True])
@pytest.mark.parametrize("kind", ["gsg", "lcg"])
def test_x0_guidance_gradient_equals_autograd_of_the_composition(kind, through):
    sched = NoiseSchedule.linear()
    den = GaussianDenoiser(sched.alpha_bar, m=0.1)
    guide = colour_guide()
    x, label = colour_scenes(4, n=2)
    j = 399
    x_t = sched.q_sample(x, j, torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    ctx = _context(x_t, sched, j, den)
    sg = SemanticGuidance(imagenet_preprocess, guide, label, scale=1.0, loss_on="x0", through_denoiser=through,
                          lcg=kind == "lcg", gsg=kind == "gsg")
    got, _ = sg.gradient(x_t, kind, ctx)
    # reference: autograd of CE(guide(pre(x0_hat(x)))) directly (GSG) / per class (LCG: masked copies)
    xi = x_t.detach().requires_grad_(True)
    eps = den(xi, ctx.t) if through else ctx.eps
    x0 = (xi - sched.sqrt_one_minus_alpha_bar[j] * eps) / sched.sqrt_alpha_bar[j]
    z = imagenet_preprocess(x0)
    if kind == "gsg":
        ce = F.cross_entropy(guide(z), label, ignore_index=IGNORE, reduction="sum")
        (ref,) = torch.autograd.grad(ce, xi)
        ref = ref * (label != IGNORE)[:, None]
    else:
        total = 0.0
        for i in range(len(x)):
            for c in torch.unique(label[i]).tolist():
                if c == IGNORE:
                    continue
                m = (label[i:i + 1] == c)
                target = torch.where(m, label[i:i + 1], torch.full_like(label[i:i + 1], IGNORE))
                total = total + F.cross_entropy(guide(z[i:i + 1] * m[:, None]), target, ignore_index=IGNORE,
                                                reduction="sum")
        (ref,) = torch.autograd.grad(total, xi)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    if not through:   # eps fixed: the gradient on x0_hat divided by sqrt(alpha_bar)
        x0c = ctx.x0_fixed_eps(x_t).detach().requires_grad_(True)
        ce = F.cross_entropy(guide(imagenet_preprocess(x0c)), label, ignore_index=IGNORE, reduction="sum")
        (g0,) = torch.autograd.grad(ce, x0c)
        if kind == "gsg":
            torch.testing.assert_close(got, g0 * (label != IGNORE)[:, None] / sched.sqrt_alpha_bar[j],
                                       rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in guide.parameters())


def test_x0_guidance_without_context_is_a_clear_error():
    x, label = colour_scenes(0, n=1)
    sg = SemanticGuidance(imagenet_preprocess, colour_guide(), label, scale=1.0, loss_on="x0")
    assert sg.uses_context
    with pytest.raises(ValueError, match="StepContext"):
        sg.gradient(x, "gsg", None)


@pytest.mark.parametrize("kwargs", [
    {"lcg_input": "whole", "gsg": False},
    {"lcg_input": "whole"},
    {"loss_on": "x0"},
    {"loss_on": "x0", "gsg": False},
    {"loss_on": "x0", "through_denoiser": True},
    {"loss_on": "x0", "lcg_input": "whole", "through_denoiser": True},
], ids=["lcg_ctx_only", "sgg_lcg_ctx", "sgg_x0", "lcg_x0", "sgg_x0_backprop", "sgg_ctx_x0_backprop"])
def test_new_guidance_lowers_guide_ce_in_a_chain(kwargs):
    """As the paper's settings do (tests/test_guidance_sampling.py): calibrated shift 0.2 sigma_k."""
    sched = NoiseSchedule.linear()
    sampler = Sampler(sched, GaussianDenoiser(sched.alpha_bar))
    guide = colour_guide()
    guided, unguided = [], []
    for seed in range(3):
        x, label = colour_scenes(seed)
        sg = SemanticGuidance(imagenet_preprocess, guide, label, calibrate=True, shift=0.2, **kwargs)
        gen = torch.Generator().manual_seed(100 + seed)
        guided.append(_guide_ce(guide, sampler.translate(x, 500, 10, guidance=sg, generator=gen), label))
        assert len(sg.stats) == 10
        gen = torch.Generator().manual_seed(100 + seed)
        unguided.append(_guide_ce(guide, sampler.translate(x, 500, 10, generator=gen), label))
    assert sum(unguided) / 3 > 0.8
    assert sum(guided) < 0.75 * sum(unguided), (guided, unguided)
    assert all(p.grad is None for p in guide.parameters())


def test_new_settings_are_checked_with_one_line_errors():
    s = validate_guidance({"lcg_input": "whole", "loss_on": "x0", "through_denoiser": True})
    assert (s.lcg_input, s.loss_on, s.through_denoiser) == ("whole", "x0", True)
    d = validate_guidance({})
    assert (d.lcg_input, d.loss_on, d.through_denoiser) == ("masked", "x_t", False)   # the paper's
    for g, match in [({"lcg_input": "context"}, "guidance.lcg_input"), ({"loss_on": "x_0"}, "guidance.loss_on"),
                     ({"through_denoiser": True}, "guidance.through_denoiser"),
                     ({"loss_on": "x0", "through_denoiser": "yes"}, "guidance.through_denoiser")]:
        with pytest.raises(ConfigError, match=match) as err:
            validate_guidance(g)
        assert "\n" not in str(err.value)
