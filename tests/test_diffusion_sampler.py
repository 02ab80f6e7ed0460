"""Tests of the reverse loop (dasslab.diffusion.sampler) and the denoiser U-Net (dasslab.diffusion.unet)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dasslab.diffusion import PRESETS, Denoiser, NoiseSchedule, Sampler, build_unet

T = 1000


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.linear()


def linear_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed, deterministic stand-in for eps_theta: linear in x and in the (original) timestep."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 * x + 5e-4 * t


def oracle_for(x0: torch.Tensor, sched: NoiseSchedule):
    """The denoiser that predicts the true noise of a known x0 (by inverting Eq. 2)."""

    def eps(x_t, t):
        ab = sched.alpha_bar[t].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    return eps


def reference_translate(x0, depth, kept, denoise, generator):
    """Straightforward float64 re-implementation of phi^n, written independently of the package."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    ab_full = np.cumprod(1.0 - betas)
    ab = ab_full[kept]
    b = 1.0 - ab / np.concatenate([[1.0], ab[:-1]])
    shape = tuple(x0.shape)
    noise = torch.randn(shape, generator=generator).double()
    x = np.sqrt(ab[-1]) * x0.double() + np.sqrt(1.0 - ab[-1]) * noise
    for j in reversed(range(len(kept))):
        z = torch.randn(shape, generator=generator).double() if j > 0 else None
        eps = denoise(x, torch.full((shape[0],), kept[j]))
        mu = (x - b[j] / np.sqrt(1.0 - ab[j]) * eps) / np.sqrt(1.0 - b[j])
        x = mu + np.sqrt(b[j]) * z if j > 0 else mu
    return x


def x0_fixture(shape=(2, 3, 4, 4)) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.linspace(-1, 1, n).reshape(shape)


# ---------------------------------------------------------------------------- full-loop values


def test_full_loop_matches_reference_and_pins(sched):
    x0 = x0_fixture()
    s = Sampler(sched, linear_denoiser)
    y = s.translate(x0, 200, generator=torch.Generator().manual_seed(1234))
    ref = reference_translate(x0, 200, list(range(200)), linear_denoiser, torch.Generator().manual_seed(1234))
    torch.testing.assert_close(y.double(), ref, atol=1e-4, rtol=1e-4)
    assert len(s.stats) == 200
    # Pinned values (torch CPU generator, seed 1234), so that a silent change of the loop shows.
    got = [y.flatten()[i].item() for i in (0, 17, 50, 95)] + [y.mean().item()]
    assert got == pytest.approx(PINNED_FULL, abs=1e-4)


def test_respaced_loop_matches_reference_and_pins(sched):
    x0 = x0_fixture()
    s = Sampler(sched, linear_denoiser)
    y = s.translate(x0, 41, num_steps=5, generator=torch.Generator().manual_seed(7))
    kept = [0, 10, 20, 30, 40]
    ref = reference_translate(x0, 41, kept, linear_denoiser, torch.Generator().manual_seed(7))
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    assert [st["t"] for st in s.stats] == kept[::-1]
    assert [st["step"] for st in s.stats] == list(range(5))
    got = [y.flatten()[i].item() for i in (0, 17, 50, 95)] + [y.mean().item()]
    assert got == pytest.approx(PINNED_RESPACED, abs=1e-5)


PINNED_FULL = [-1.137076, -0.463559, 0.157513, 0.73992, -0.127905]
PINNED_RESPACED = [-1.126509, -0.778381, 0.228328, 1.096632, -0.013436]


def test_denoiser_gets_original_timesteps(sched):
    seen = []

    def spy(x, t):
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    Sampler(sched, spy).translate(x0_fixture(), 600, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert seen == [599, 399, 200, 0]


# ---------------------------------------------------------------------------- phi^n properties


def test_phi0_is_identity(sched):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    s = Sampler(sched, linear_denoiser)
    g = torch.Generator().manual_seed(0)
    y = s.translate(x0, 0, generator=g)
    assert torch.equal(y, x0) and y is not x0
    # phi^0 draws no noise
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("depth, num_steps", [(1, None), (100, None), (600, 25), (1000, 10)])
def test_translation_keeps_shape_dtype_and_oracle_lands_on_x0(sched, dtype, depth, num_steps):
    x0 = (torch.rand(3, 3, 8, 16, generator=torch.Generator().manual_seed(5)) * 2 - 1).to(dtype)
    s = Sampler(sched, oracle_for(x0, sched))
    y = s.translate(x0, depth, num_steps=num_steps, generator=torch.Generator().manual_seed(9))
    assert y.shape == x0.shape and y.dtype == dtype
    # with the true noise, Eq. 4 is the posterior mean, and the last step lands exactly on x0
    torch.testing.assert_close(y, x0, atol=2e-4, rtol=0)


def test_translation_generator_reproducible(sched):
    x0 = x0_fixture()
    s = Sampler(sched, linear_denoiser)
    a = s.translate(x0, 50, num_steps=10, generator=torch.Generator().manual_seed(3))
    b = s.translate(x0, 50, num_steps=10, generator=torch.Generator().manual_seed(3))
    c = s.translate(x0, 50, num_steps=10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_respaced_schedules_are_cached(sched):
    s = Sampler(sched, linear_denoiser)
    assert s.respaced([0, 5, 9]) is s.respaced([0, 5, 9])


@pytest.mark.parametrize("depth", [-1, T + 1, 2.5])
def test_depth_out_of_range(sched, depth):
    s = Sampler(sched, linear_denoiser)
    with pytest.raises(ValueError, match=r"depth=.*allowed 0\.\.1000"):
        s.translate(x0_fixture(), depth)


def test_bad_num_steps(sched):
    s = Sampler(sched, linear_denoiser)
    with pytest.raises(ValueError, match="num_steps=0"):
        s.translate(x0_fixture(), 10, num_steps=0)


def test_full_depth_allowed(sched):
    s = Sampler(sched, linear_denoiser)
    y = s.translate(x0_fixture(), T, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert [st["t"] for st in s.stats] == [999, 500, 0]
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------- guidance


def test_guidance_sign_moves_mean_by_minus_sigma_g(sched):
    s = Sampler(sched, linear_denoiser)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    g = torch.full_like(x, 0.7)
    for sch, j in ((sched, 300), (sched.respace([0, 100, 200, 300]), 2)):
        plain = s.reverse_step(x, j, sch, z=z)
        guided = s.reverse_step(x, j, sch, guidance=lambda xt, mu, var, step, n: mu - var * g, z=z)
        beta = sch.betas[j].item()
        torch.testing.assert_close(guided - plain, torch.full_like(x, -beta * 0.7), atol=1e-6, rtol=1e-5)
        assert s.stats[-1]["shift_rms"] == pytest.approx(beta * 0.7, rel=1e-5)
        assert s.stats[-1]["sigma"] == pytest.approx(beta**0.5, rel=1e-6)
        assert s.stats[-1]["shift_over_sigma"] == pytest.approx(beta**0.5 * 0.7, rel=1e-5)
    # last step: no noise, mean only
    last = s.reverse_step(x, 0, sched, guidance=lambda xt, mu, var, step, n: mu - var * g, z=z)
    torch.testing.assert_close(
        last, sched.p_mean(x, 0, linear_denoiser(x, torch.zeros(2))) - sched.betas[0] * g
    )


def test_guidance_descends_the_loss(sched):
    """g = lambda * grad of ||x - target||^2 pulls the translation towards target (descent sign)."""
    x0 = torch.zeros(2, 3, 8, 8)
    target = torch.ones_like(x0) * 0.5

    def guidance(x, mu, var, step, n):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            loss = (xg - target).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, xg)
        return mu - var * 5.0 * grad

    s = Sampler(sched, oracle_for(x0, sched))
    plain = s.translate(x0, 300, num_steps=20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # guidance must work even when the caller disabled grad
        guided = s.translate(
            x0, 300, num_steps=20, guidance=guidance, generator=torch.Generator().manual_seed(0)
        )
    assert (guided - target).pow(2).mean() < (plain - target).pow(2).mean()
    assert all(st["shift_rms"] > 0 for st in s.stats)


def test_zero_guidance_reproduces_unguided_exactly(sched):
    x0 = x0_fixture()
    s = Sampler(sched, linear_denoiser)
    plain = s.translate(x0, 60, num_steps=12, generator=torch.Generator().manual_seed(11))
    calls = []

    def zero(x, mu, var, step, n):
        calls.append((step, n))
        return None if step % 3 == 0 else mu - var * torch.zeros_like(x)

    guided = s.translate(x0, 60, num_steps=12, guidance=zero, generator=torch.Generator().manual_seed(11))
    assert torch.equal(plain, guided)
    assert calls == [(i, 12) for i in range(12)]


def test_nan_guidance_is_skipped_and_counted(sched):
    x0 = x0_fixture()
    s = Sampler(sched, linear_denoiser)
    plain = s.translate(x0, 30, num_steps=6, generator=torch.Generator().manual_seed(2))

    def bad(x, mu, var, step, n):
        g = torch.ones_like(x)
        if step in (1, 4):
            g[0, 0, 0, 0] = float("nan") if step == 1 else float("inf")
            return mu - var * g
        return mu

    with pytest.warns(RuntimeWarning, match="not finite"):
        out = s.translate(x0, 30, num_steps=6, guidance=bad, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(out).all()
    assert torch.equal(out, plain)
    assert s.skipped == 2
    assert [st["skipped"] for st in s.stats] == [False, True, False, False, True, False]
    # stats and the counter describe the latest call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.translate(x0, 30, num_steps=6, generator=torch.Generator().manual_seed(2))
    assert s.skipped == 0 and len(s.stats) == 6


def test_guidance_shape_mismatch_errors(sched):
    s = Sampler(sched, linear_denoiser)
    with pytest.raises(ValueError, match="shape"):
        s.translate(x0_fixture(), 5, guidance=lambda x, mu, var, step, n: torch.zeros(1), generator=torch.Generator())


def test_shift_summary(sched):
    s = Sampler(sched, linear_denoiser)
    s.translate(x0_fixture(), 20, num_steps=4, guidance=lambda x, mu, var, i, n: mu - var if i else None)
    summ = Sampler.shift_summary(s.stats)
    assert summ["guided_steps"] == 3 and summ["shift_over_sigma_max"] > 0


# ---------------------------------------------------------------------------- unconditional sampling


def test_sample_shape_and_reproducible(sched):
    s = Sampler(sched, linear_denoiser, progress=True)
    a = s.sample((2, 3, 4, 8), num_steps=8, generator=torch.Generator().manual_seed(0))
    b = s.sample((2, 3, 4, 8), num_steps=8, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 4, 8) and torch.equal(a, b)
    assert s.stats[0]["t"] == T - 1 and s.stats[-1]["t"] == 0 and len(s.stats) == 8


# ---------------------------------------------------------------------------- U-Net


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_small_preset_forward_square_and_nonsquare():
    torch.manual_seed(0)
    d = Denoiser.build(32, preset="small").eval()
    assert 0.8e6 < n_params(d) < 1.5e6
    assert d.image_size == (32, 32) and d.in_channels == 3 and d.downsample_factor == 4
    with torch.no_grad():
        for shape in ((2, 3, 32, 32), (1, 3, 32, 64)):
            out = d(torch.randn(shape), torch.tensor([10] * shape[0]))
            assert out.shape == shape and torch.isfinite(out).all()
        assert d(torch.randn(1, 3, 32, 32), 5).shape == (1, 3, 32, 32)  # int t
    assert Denoiser.build((32, 64)).image_size == (32, 64)


def test_small_unet_in_sampler(sched):
    torch.manual_seed(0)
    d = Denoiser.build(16, in_channels=1).eval()
    s = Sampler(sched, d)
    y = s.translate(torch.zeros(2, 1, 16, 16), 5, generator=torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 16, 16) and torch.isfinite(y).all()


def test_paper_preset_builds():
    unet = build_unet(256, preset="ddpm_paper")
    n = n_params(unet)
    assert 112e6 < n < 115e6, n  # DDPM reports 114 M for its 256-px models; this layout has 113.7 M
    assert list(unet.config.block_out_channels) == [128, 128, 256, 256, 512, 512]
    assert unet.config.layers_per_block == 2
    # attention at the level whose resolution is 256 / 2**4 = 16 px
    assert [type(b).__name__ for b in unet.down_blocks].index("AttnDownBlock2D") == 4
    assert [type(b).__name__ for b in unet.up_blocks].index("AttnUpBlock2D") == 1
    d = Denoiser(unet)
    assert d.downsample_factor == 32
    d.check_input((1, 3, 256, 512))  # Cityscapes crops fit
    with pytest.raises(ValueError, match="not divisible by 32"):
        d.check_input((1, 3, 256, 500))


def test_build_unet_errors():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*ddpm_paper.*small"):
        build_unet(32, preset="huge")
    with pytest.raises(ValueError, match="not divisible by 4"):
        build_unet(30, preset="small")
    with pytest.raises(ValueError, match="down_block_types"):
        build_unet(32, block_out_channels=(32, 64))
    assert set(PRESETS) == {"ddpm_paper", "small"}
    # overrides reach UNet2DModel
    assert build_unet(32, block_out_channels=(16, 32, 32)).config.block_out_channels[0] == 16


def test_check_input_errors():
    d = Denoiser.build(32, in_channels=3)
    d.check_input(torch.zeros(1, 3, 64, 48))  # other sizes are fine if divisible
    with pytest.raises(ValueError, match="3-channel.*1 channels"):
        d.check_input(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="30x32 is not divisible by 4"):
        d.check_input(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        d.check_input(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        d(torch.zeros(1, 1, 32, 32), 0)
