"""Tests of dasslab.diffusion.schedule: the DDPM math against closed forms written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dasslab.diffusion import NoiseSchedule, domain_timestep, spaced_steps


def ref_alpha_bar(T: int = 1000, b0: float = 1e-4, b1: float = 0.02) -> np.ndarray:
    betas = np.linspace(b0, b1, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.linear()


# ---------------------------------------------------------------------------- construction


def test_linear_schedule_values_and_buffers(sched):
    assert sched.num_timesteps == 1000 and len(sched) == 1000
    assert sched.betas.dtype == torch.float32
    assert sched.timesteps.dtype == torch.int64
    assert torch.equal(sched.timesteps, torch.arange(1000))
    assert sched.betas[0].item() == pytest.approx(1e-4)
    assert sched.betas[-1].item() == pytest.approx(0.02)
    np.testing.assert_allclose(sched.alpha_bar.numpy(), ref_alpha_bar(), rtol=1e-5)
    assert sched.alpha_bar_prev[0].item() == 1.0
    np.testing.assert_allclose(sched.alpha_bar_prev[1:].numpy(), sched.alpha_bar[:-1].numpy())
    names = {n for n, _ in sched.named_buffers()}
    for n in (
        "betas",
        "alphas",
        "alpha_bar",
        "alpha_bar_prev",
        "sqrt_alpha_bar",
        "sqrt_one_minus_alpha_bar",
        "timesteps",
    ):
        assert n in names
    # Buffers follow .to(); the integer timesteps keep their dtype.
    s64 = NoiseSchedule.linear(10).to(torch.float64)
    assert s64.betas.dtype == torch.float64 and s64.timesteps.dtype == torch.int64
    # A schedule adds nothing to a checkpoint.
    assert sched.state_dict() == {}


@pytest.mark.parametrize(
    "betas, match",
    [([], "non-empty"), ([0.1, 1.0], r"\(0, 1\)"), ([0.0, 0.1], r"\(0, 1\)"), ([[0.1]], "1-D")],
)
def test_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(torch.tensor(betas, dtype=torch.float64))


# ---------------------------------------------------------------------------- Eq. 2


def test_q_sample_mean_and_variance(sched):
    # Each column is one (x0, t) pair; many rows of independent noise estimate the moments.
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0])
    t_idx = torch.tensor([10, 300, 600, 999])
    n = 200_000
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 4, generator=g)
    # q_sample broadcasts a per-sample t over trailing dims: put the 4 pairs on the batch axis.
    xt = sched.q_sample(x0[:, None].expand(4, n), t_idx, noise.T.contiguous()).double()
    ab = ref_alpha_bar()[t_idx.numpy()]
    np.testing.assert_allclose(xt.mean(1).numpy(), np.sqrt(ab) * x0.double().numpy(), atol=0.01)
    np.testing.assert_allclose(xt.var(1).numpy(), 1.0 - ab, rtol=0.02, atol=2e-4)


def test_q_sample_exact_and_int_t(sched):
    x0 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 500, 999])
    ab = torch.tensor(ref_alpha_bar()[[0, 500, 999]], dtype=torch.float64).view(3, 1, 1, 1)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    torch.testing.assert_close(sched.q_sample(x0, t, eps).double(), expected, rtol=1e-5, atol=1e-6)
    # an int t applies to the whole batch
    torch.testing.assert_close(sched.q_sample(x0, 500, eps), sched.q_sample(x0, torch.full((3,), 500), eps))
    with pytest.raises(ValueError, match="noise shape"):
        sched.q_sample(x0, t, eps[:1])


def test_predict_x0_inverts_q_sample(sched):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([5, 400])
    torch.testing.assert_close(sched.predict_x0(sched.q_sample(x0, t, eps), t, eps), x0, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- Eq. 4 and Sigma


def test_p_mean_matches_eq4(sched):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 5, 5, generator=g)
    eps = torch.randn(4, 3, 5, 5, generator=g)
    t_idx = [0, 1, 250, 999]
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    expected = torch.empty_like(x, dtype=torch.float64)
    for i, ti in enumerate(t_idx):
        b = betas[ti]
        expected[i] = (x[i].double() - b / np.sqrt(1 - ab[ti]) * eps[i].double()) / np.sqrt(1 - b)
    got = sched.p_mean(x, torch.tensor(t_idx), eps)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    # int t path
    torch.testing.assert_close(
        sched.p_mean(x[2:3], 250, eps[2:3]).double(), expected[2:3], rtol=1e-5, atol=1e-6
    )


def test_p_mean_with_true_noise_is_x0_at_first_step(sched):
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    eps = torch.randn_like(x0)
    x_t = sched.q_sample(x0, 0, eps)
    torch.testing.assert_close(sched.p_mean(x_t, 0, eps), x0, atol=1e-5, rtol=0)


def test_p_variance_is_beta(sched):
    assert torch.equal(sched.p_variance(torch.arange(1000)), sched.betas)
    assert sched.p_variance(7).item() == sched.betas[7].item()
    assert sched.p_variance(torch.tensor(7)).item() == sched.betas[7].item()


def test_training_loss_eq5(sched):
    x0 = torch.rand(4, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 100, 999])
    seen = {}

    def oracle(x_t, tt):
        seen["t"] = tt
        return noise  # perfect prediction

    assert sched.training_loss(oracle, x0, t=t, noise=noise).item() == 0.0
    assert torch.equal(seen["t"], t)
    loss = sched.training_loss(lambda x_t, tt: torch.zeros_like(x_t), x0, t=t, noise=noise)
    assert loss.item() == pytest.approx(noise.pow(2).mean().item())
    # random t / noise from a generator are reproducible
    l1 = sched.training_loss(lambda x, tt: x, x0, generator=torch.Generator().manual_seed(0))
    l2 = sched.training_loss(lambda x, tt: x, x0, generator=torch.Generator().manual_seed(0))
    assert l1.item() == l2.item()


# ---------------------------------------------------------------------------- respacing


def test_respace_keeps_alpha_bar(sched):
    kept = spaced_steps(600, 25)
    r = sched.respace(kept)
    assert r.num_timesteps == 25
    assert r.timesteps.tolist() == kept
    np.testing.assert_allclose(r.alpha_bar.numpy(), ref_alpha_bar()[kept], rtol=1e-6)
    # beta'_j = 1 - ab[k_j] / ab[k_{j-1}]
    ab = ref_alpha_bar()[kept]
    ref_b = 1 - ab / np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(r.betas.numpy(), ref_b, rtol=1e-6)
    assert r.timestep(3) == kept[3]


def test_respace_identity_and_nested(sched):
    full = sched.respace(range(1000))
    np.testing.assert_allclose(full.betas.numpy(), sched.betas.numpy(), rtol=1e-6)
    first = sched.respace([0, 10, 20, 30, 40])
    nested = first.respace([1, 3])  # indices into `first`
    assert nested.timesteps.tolist() == [10, 30]
    np.testing.assert_allclose(nested.alpha_bar.numpy(), ref_alpha_bar()[[10, 30]], rtol=1e-6)


@pytest.mark.parametrize(
    "kept, match",
    [
        ([], "empty"),
        ([3, 1], "sorted"),
        ([1, 1, 2], "duplicates"),
        ([0, 1000], "out of range"),
        ([-1, 5], "out of range"),
        ([0.5], "integers"),
    ],
)
def test_respace_validation(sched, kept, match):
    with pytest.raises(ValueError, match=match):
        sched.respace(kept)


# ---------------------------------------------------------------------------- spaced_steps / domains


@pytest.mark.parametrize(
    "t_max, n", [(1, 1), (2, 2), (10, 3), (100, 25), (600, 25), (1000, 50), (7, 100), (37, 36)]
)
def test_spaced_steps_properties(t_max, n):
    s = spaced_steps(t_max, n)
    assert len(s) == min(n, t_max)
    assert s == sorted(set(s))
    assert s[0] == 0 and s[-1] == t_max - 1
    assert all(0 <= k < t_max for k in s)
    if len(s) > 2:  # evenly spaced: gaps differ by at most one
        gaps = np.diff(s)
        assert gaps.max() - gaps.min() <= 1


def test_spaced_steps_special_cases():
    assert spaced_steps(10, 100) == list(range(10))
    assert spaced_steps(50, 1) == [49]
    assert spaced_steps(11, 3) == [0, 5, 10]
    with pytest.raises(ValueError, match="t_max"):
        spaced_steps(0, 5)
    with pytest.raises(ValueError, match="num_steps"):
        spaced_steps(5, 0)


def test_domain_timestep():
    assert domain_timestep(0, 600) == 0
    assert domain_timestep(37, 600) == 37
    assert domain_timestep(600, 600) == 600
    assert domain_timestep(600, 600, t_max=300) == 300
    assert domain_timestep(1, 4, t_max=10) == 3  # 2.5 rounds up
    assert domain_timestep(3, 4, t_max=10) == 8  # 7.5 rounds up
    assert domain_timestep(1, 600, t_max=600) == 1
    assert domain_timestep(5, 10, t_max=1000, num_timesteps=1000) == 500
    with pytest.raises(ValueError, match="n=-1"):
        domain_timestep(-1, 10)
    with pytest.raises(ValueError, match="n=11"):
        domain_timestep(11, 10)
    with pytest.raises(ValueError, match="N must be"):
        domain_timestep(0, 0)
    with pytest.raises(ValueError, match="t_max=0"):
        domain_timestep(1, 10, t_max=0)
    with pytest.raises(ValueError, match="t_max=2000"):
        domain_timestep(1, 10, t_max=2000, num_timesteps=1000)
    with pytest.raises(ValueError, match="T=1000"):
        domain_timestep(1200, 1200, num_timesteps=1000)
