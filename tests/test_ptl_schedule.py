"""The learning rate of adaptation (``ptl.lr_schedule``): one poly decay over all N x K iterations
(``global``, the paper's reading), restarted at every domain's first step (``domain``), or none
(``constant``) — the scheduler Lightning steps gives the closed form at every domain start and
mid-domain; a single-domain run (direct, none, ceiling) is the same under ``global`` and ``domain``."""

from __future__ import annotations

import pytest
import torch

from dasslab.ptl import DomainSchedule, PTLModule, lr_factor

LR, POWER = 0.1, 0.9


def module(name="progressive", N=3, K=4, max_steps=None, lr_schedule="global"):
    from omegaconf import OmegaConf

    from dasslab.workflow.plan import load_option

    ptl = {**OmegaConf.to_container(load_option("ptl", "progressive")),    # the settings' one home
           "name": name, "N": N, "K": K, "lr_schedule": lr_schedule}
    return PTLModule(backbone={"name": "small", "options": {"widths": [4, 4, 4]}}, num_classes=3,
                     class_names=["background", "a", "b"], optim={"lr": LR, "poly_power": POWER},
                     max_steps=max_steps or N * K, ptl=ptl)


def test_the_module_takes_no_second_default_for_a_ptl_setting():
    from omegaconf import OmegaConf

    from dasslab.workflow.plan import load_option

    ptl = OmegaConf.to_container(load_option("ptl", "progressive"))
    del ptl["pool_batch"]
    with pytest.raises(ValueError, match="pool_batch"):
        PTLModule(backbone={"name": "small", "options": {"widths": [4, 4, 4]}}, num_classes=3,
                  class_names=["background", "a", "b"], optim={"lr": LR}, max_steps=4, ptl=ptl)


def lrs(m, steps):
    """The learning rate (of the first parameter group, over its lr_mult) in force at steps 0 … steps - 1."""
    out = m.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    base = opt.param_groups[0]["initial_lr"] / LR
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"] / base)
        opt.step()
        sched.step()
    return seen


def poly(i, length):
    return LR * (1 - min(i, length) / length) ** POWER


@pytest.mark.parametrize("schedule", ["global", "domain", "constant"])
def test_the_lr_at_each_domain_start_and_mid_domain_follows_the_closed_form(schedule):
    N, K = 3, 4
    seen = lrs(module(N=N, K=K, lr_schedule=schedule), N * K)
    expected = {"global": [poly(s, N * K) for s in range(N * K)],
                "domain": [poly(s % K, K) for s in range(N * K)],
                "constant": [LR] * (N * K)}[schedule]
    for n in range(1, N + 1):
        start, mid = (n - 1) * K, (n - 1) * K + K // 2
        assert seen[start] == pytest.approx(expected[start], rel=1e-9), (schedule, n, "start")
        assert seen[mid] == pytest.approx(expected[mid], rel=1e-9), (schedule, n, "mid")
    assert seen == pytest.approx(expected, rel=1e-9)
    if schedule == "domain":  # every domain starts at the full lr; global only the first
        assert [seen[(n - 1) * K] for n in range(1, N + 1)] == pytest.approx([LR] * N)
    if schedule == "global":
        assert seen[K] < LR


def test_the_last_domain_decays_over_what_is_left_of_max_steps():
    """ptl.max_steps past N x K: n stays at N, and so does its decay (over max_steps - (N-1) K)."""
    N, K, S = 3, 4, 14
    seen = lrs(module(N=N, K=K, max_steps=S, lr_schedule="domain"), S)
    last = (N - 1) * K
    assert seen[last:] == pytest.approx([poly(s - last, S - last) for s in range(last, S)], rel=1e-9)
    assert seen[:last] == pytest.approx([poly(s % K, K) for s in range(last)], rel=1e-9)


@pytest.mark.parametrize("name", ["direct", "none", "ceiling"])
def test_one_domain_runs_decay_the_same_under_global_and_domain(name):
    g = lrs(module(name, N=3, K=4, lr_schedule="global"), 12)
    d = lrs(module(name, N=3, K=4, lr_schedule="domain"), 12)
    assert d == pytest.approx(g, rel=1e-12)
    assert g == pytest.approx([poly(s, 12) for s in range(12)], rel=1e-9)


def test_lr_factor_and_domain_spans():
    sched = DomainSchedule("progressive", N=3, K=4)
    assert [sched.span(s, 12) for s in (0, 3, 4, 11)] == [(0, 4), (0, 4), (4, 4), (8, 4)]
    assert sched.span(13, 14) == (8, 6)
    assert DomainSchedule("ceiling", N=3, K=4).span(5, 12) == (0, 12)
    assert DomainSchedule("ceiling", N=3, K=4).domain(5) == 3 and DomainSchedule("ceiling", N=3, K=4).num_domains == 1
    assert lr_factor(4, sched, 12, 1.0, "domain") == 1.0 and lr_factor(6, sched, 12, 1.0, "domain") == 0.5
    assert lr_factor(6, sched, 12, 1.0, "global") == 0.5 and lr_factor(6, sched, 12, 1.0, "constant") == 1.0


def test_the_global_schedule_is_the_segmenter_modules():
    """lr_schedule=global keeps SegmenterModule's poly decay (the same scheduler as before the setting)."""
    from dasslab.lit.segmenter_module import SegmenterModule

    m = module(lr_schedule="global")
    torch.manual_seed(0)
    ref = SegmenterModule(m.hparams.backbone, 3, ["background", "a", "b"], m.hparams.optim, 12)
    assert lrs(m, 12) == pytest.approx(lrs(ref, 12), rel=1e-12)
