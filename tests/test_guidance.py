"""Semantic Gradient Guidance: gradients, reductions, arrangements and the guidance function.

The per-class Python loop of Eq. 6-9 lives here only, as the reference the batched
LCG must match (docs/method.md §2).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dasslab.errors import ConfigError
from dasslab.guidance import (
    ARRANGEMENTS,
    GuidanceSettings,
    SemanticGuidance,
    arrangement_plan,
    class_copies,
    gsg_grad,
    gsg_loss_and_grad,
    lcg_grad,
    lcg_loss_and_grad,
    make_guidance,
    segmentation_loss,
    validate_guidance,
)

IGNORE = 255
K = 5
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one intra-op thread


def imagenet_preprocess(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2 - MEAN) / STD


class TinyGuide(nn.Module):
    """A random conv net with BatchNorm and dropout (so eval mode matters)."""

    def __init__(self, k: int = K, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Dropout2d(0.5),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(8, k, 1),
        )
        with torch.no_grad():  # non-trivial running statistics
            self.body[1].running_mean.uniform_(-0.2, 0.2)
            self.body[1].running_var.uniform_(0.5, 2.0)

    def forward(self, z):
        return self.body(z)


def lcg_grad_loop(x, label, preprocess, net, reduction="sum", ignore_index=IGNORE):
    """Reference LCG (Eq. 6-9): one image, one class, one forward/backward at a time.

    Uses torch's own ``F.cross_entropy`` reduction, independently of dasslab's losses.
    """
    was = net.training
    net.eval()
    grad = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for c in torch.unique(label[i]).tolist():
            if c == ignore_index:
                continue
            xi = x[i : i + 1].detach().requires_grad_(True)
            m = label[i : i + 1] == c
            logits = net(preprocess(xi) * m[:, None].float())
            target = torch.where(
                m, torch.full_like(label[i : i + 1], c), torch.full_like(label[i : i + 1], ignore_index)
            )
            loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
            (g,) = torch.autograd.grad(loss, xi)
            grad[i] += (m[:, None].float() * g)[0]  # m_c ⊙ grad L_c
    net.train(was)
    return grad


def make_batch(seed: int = 0, h: int = 12, w: int = 16):
    """Four images with different class sets, ignore pixels, a one-pixel class and an unlabelled image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 3, h, w, generator=g) * 2 - 1
    label = torch.full((4, h, w), IGNORE, dtype=torch.long)
    label[0, :6] = 0
    label[0, 6:, :8] = 2
    label[0, 6:, 8:] = 3  # image 0: classes {0, 2, 3}, no ignore
    label[1] = torch.randint(0, K, (h, w), generator=g)
    label[1, :2] = IGNORE  # image 1: every class, random layout, an ignore band
    label[2, 3:9, 4:12] = 4
    label[2, 0, 0] = 1  # image 2: a one-pixel class among ignore pixels
    # image 3: no labelled pixel at all
    return x, label


@pytest.fixture
def guide():
    return TinyGuide()


# ----------------------------------------------------------------------------------- LCG
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_batched_lcg_equals_per_class_loop(guide, reduction):
    x, label = make_batch()
    ref = lcg_grad_loop(x, label, imagenet_preprocess, guide, reduction)
    got = lcg_grad(x, label, imagenet_preprocess, guide, reduction=reduction)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert ref.abs().sum() > 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # one-pixel class gets its gradient, the unlabelled image none
    assert got[2, :, 0, 0].abs().sum() > 0
    assert torch.equal(got[3], torch.zeros_like(got[3]))


@pytest.mark.parametrize("max_batch", [1, 3, 7, 100])
def test_chunked_lcg_equals_unchunked(guide, max_batch):
    x, label = make_batch(1)
    full, loss_full = lcg_loss_and_grad(x, label, imagenet_preprocess, guide)
    part, loss_part = lcg_loss_and_grad(x, label, imagenet_preprocess, guide, max_batch=max_batch)
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_part, loss_full)


def test_lcg_is_one_forward_and_one_backward(guide):
    x, label = make_batch()
    calls = []
    guide.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    lcg_grad(x, label, imagenet_preprocess, guide)
    n_pairs = 3 + (K) + 2  # image 0: 3 classes, image 1: all K, image 2: 2, image 3: none
    assert calls == [n_pairs]
    calls.clear()
    lcg_grad(x, label, imagenet_preprocess, guide, max_batch=4)
    assert calls == [4, 4, 2]


def test_lcg_gradient_zero_at_ignore_pixels(guide):
    x, label = make_batch(2)
    g = lcg_grad(x, label, imagenet_preprocess, guide)
    ignore = (label == IGNORE)[:, None].expand_as(g)
    assert torch.all(g[ignore] == 0)
    assert torch.all(g[~ignore].abs().sum() > 0)


def test_lcg_loss_counts_only_own_class_pixels(guide):
    """Each copy's loss equals a CE whose non-class pixels are ignored (not class 0)."""
    x, label = make_batch()
    _, loss = lcg_loss_and_grad(x, label, imagenet_preprocess, guide)
    guide.eval()
    with torch.no_grad():
        z = imagenet_preprocess(x)
        expected = torch.zeros(4)
        for i in range(4):
            for c in torch.unique(label[i]).tolist():
                if c == IGNORE:
                    continue
                m = label[i : i + 1] == c
                t = torch.where(m, c, IGNORE)
                expected[i] += F.cross_entropy(
                    guide(z[i : i + 1] * m[:, None]), t, ignore_index=IGNORE, reduction="sum"
                )
    torch.testing.assert_close(loss, expected)
    assert loss[3] == 0


def test_class_copies_enumerates_pairs_in_order():
    _, label = make_batch()
    cc = class_copies(label)
    assert cc.image_index.tolist() == [0, 0, 0] + [1] * K + [2, 2]
    assert cc.classes.tolist() == [0, 2, 3] + list(range(K)) + [1, 4]
    assert cc.masks.shape == (len(cc), 1, *label.shape[1:]) and cc.masks.dtype == torch.bool
    assert int(cc.masks[8].sum()) == 1  # the one-pixel class
    assert torch.all((cc.targets == IGNORE) == ~cc.masks[:, 0])
    # disjoint masks per image that cover exactly the labelled pixels
    for i in range(4):
        cover = cc.masks[cc.image_index == i, 0].sum(0)
        assert torch.equal(cover, (label[i] != IGNORE).long())


def test_unlabelled_batch_gives_zero_without_calling_the_guide():
    x = torch.randn(2, 3, 8, 8)
    label = torch.full((2, 8, 8), IGNORE)

    def net(z):
        raise AssertionError("guide must not be called")

    assert torch.equal(lcg_grad(x, label, imagenet_preprocess, net), torch.zeros_like(x))
    for kw in ({}, {"lcg": False}, {"gsg": False}, {"calibrate": True}):
        sg = SemanticGuidance(imagenet_preprocess, net, label, **kw)
        assert sg(x, x, torch.tensor(0.5), 0, 2) is None  # the step stays exactly unguided


# ----------------------------------------------------------------------------------- GSG
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gsg_equals_direct_autograd(guide, reduction):
    x, label = make_batch(3)
    label = label[:3]
    x = x[:3]
    got, loss = gsg_loss_and_grad(x, label, imagenet_preprocess, guide, reduction=reduction)
    guide.eval()
    xr = x.clone().requires_grad_(True)
    logits = guide(imagenet_preprocess(xr))
    per_image = torch.stack(
        [
            F.cross_entropy(logits[i : i + 1], label[i : i + 1], ignore_index=IGNORE, reduction=reduction)
            for i in range(3)
        ]
    )
    (ref,) = torch.autograd.grad(per_image.sum(), xr)
    ref = ref * (label != IGNORE).unsqueeze(1)  # the update acts on labelled pixels only
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert (got[(label == IGNORE).unsqueeze(1).expand_as(got)] == 0).all()
    torch.testing.assert_close(loss, per_image.detach())
    if reduction == "sum":  # the per-image sums add up to torch's batch sum
        total = F.cross_entropy(logits, label, ignore_index=IGNORE, reduction="sum")
        torch.testing.assert_close(loss.sum(), total.detach())


def test_gsg_unlabelled_image_in_batch_gets_zero(guide):
    x, label = make_batch(4)
    for reduction in ("sum", "mean"):
        g = gsg_grad(x, label, imagenet_preprocess, guide, reduction=reduction)
        assert torch.equal(g[3], torch.zeros_like(g[3]))
        assert g[:3].abs().sum() > 0


def test_guidance_is_per_image_independent_of_batch(guide):
    """An image's guidance gradient does not depend on the other images in the batch."""
    x, label = make_batch(5)
    for fn in (lcg_grad, gsg_grad):
        for reduction in ("sum", "mean"):
            whole = fn(x, label, imagenet_preprocess, guide, reduction=reduction)
            alone = fn(x[1:2], label[1:2], imagenet_preprocess, guide, reduction=reduction)
            torch.testing.assert_close(whole[1:2], alone, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------- losses
def test_reductions_and_their_relation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, K, 6, 7, generator=g)
    target = torch.randint(0, K, (2, 6, 7), generator=g)
    target[0, :2] = IGNORE
    s = segmentation_loss(logits, target, "sum")
    m = segmentation_loss(logits, target, "mean")
    counts = (target != IGNORE).flatten(1).sum(1).float()
    torch.testing.assert_close(m, s / counts)
    for i in range(2):
        torch.testing.assert_close(
            s[i], F.cross_entropy(logits[i : i + 1], target[i : i + 1], ignore_index=IGNORE, reduction="sum")
        )
        torch.testing.assert_close(
            m[i], F.cross_entropy(logits[i : i + 1], target[i : i + 1], ignore_index=IGNORE)
        )
    # a term without counted pixels is 0 under both reductions
    empty = torch.full((1, 6, 7), IGNORE)
    assert segmentation_loss(logits[:1], empty, "mean").item() == 0
    assert segmentation_loss(logits[:1], empty, "sum").item() == 0


def test_mean_is_sum_divided_by_pixel_count_in_gsg(guide):
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    label = torch.randint(0, K, (1, 8, 8))
    gs = gsg_grad(x, label, imagenet_preprocess, guide, reduction="sum")
    gm = gsg_grad(x, label, imagenet_preprocess, guide, reduction="mean")
    torch.testing.assert_close(gm * 64, gs, rtol=1e-4, atol=1e-6)


def test_low_resolution_logits_are_upsampled():
    logits = torch.randn(1, K, 4, 4)
    target = torch.randint(0, K, (1, 8, 8))
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(segmentation_loss(logits, target), segmentation_loss(up, target))


def test_bad_inputs_raise_clear_errors(guide):
    x = torch.randn(2, 3, 8, 8)
    for kind in ("lcg", "gsg"):  # a label the guide has no logit for, found from shapes alone
        sg = SemanticGuidance(imagenet_preprocess, guide, torch.full((2, 8, 8), K + 3), scale=1.0)
        with pytest.raises(ValueError, match=f"class id {K + 3}.*K > {K + 3}"):
            sg.gradient(x, kind)
    with pytest.raises(ValueError, match="does not match"):
        SemanticGuidance(imagenet_preprocess, guide, torch.zeros(2, 8, 9, dtype=torch.long)).gradient(x, "gsg")
    with pytest.raises(ValueError, match="integer"):
        SemanticGuidance(imagenet_preprocess, guide, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="N x H x W"):
        lcg_grad(x, torch.zeros(2, 8, 9, dtype=torch.long), imagenet_preprocess, guide)
    with pytest.raises(TypeError, match="integer"):
        gsg_grad(x, torch.zeros(2, 8, 8), imagenet_preprocess, guide)
    with pytest.raises(ValueError, match="reduction"):
        gsg_grad(x, torch.zeros(2, 8, 8, dtype=torch.long), imagenet_preprocess, guide, reduction="avg")
    # N x 1 x H x W labels are accepted
    lab = torch.randint(0, K, (2, 1, 8, 8))
    torch.testing.assert_close(
        lcg_grad(x, lab, imagenet_preprocess, guide), lcg_grad(x, lab[:, 0], imagenet_preprocess, guide)
    )


# ----------------------------------------------------------------------------------- frozen guide
@pytest.mark.parametrize("fn", [lcg_grad, gsg_grad])
def test_guide_weights_frozen_and_mode_restored(fn):
    net = TinyGuide()
    net.train()
    net.body[3].eval()  # a mixed train/eval state must survive
    before = copy.deepcopy(net.state_dict())
    flags = [p.requires_grad for p in net.parameters()]
    x, label = make_batch()
    with torch.no_grad():  # the sampler runs under no_grad; guidance enables grad itself
        g = fn(x, label, imagenet_preprocess, net)
    assert g.abs().sum() > 0 and not g.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats untouched too
    assert net.training and net.body[1].training and not net.body[3].training
    # and the result is the eval-mode one (dropout off, running statistics)
    net_eval = copy.deepcopy(net).eval()
    torch.testing.assert_close(g, fn(x, label, imagenet_preprocess, net_eval))


def test_plain_callable_guide_is_supported():
    net = TinyGuide().eval()
    x, label = make_batch()
    torch.testing.assert_close(
        lcg_grad(x, label, imagenet_preprocess, lambda z: net(z)),
        lcg_grad(x, label, imagenet_preprocess, net),
    )


# ----------------------------------------------------------------------------------- arrangements
def test_arrangement_plans_exact():
    L, G = "lcg", "gsg"
    assert arrangement_plan("alternate", 5) == [L, G, L, G, L]
    assert arrangement_plan("alternate", 4) == [L, G, L, G]
    assert arrangement_plan("lcg_then_gsg", 4) == [L, L, G, G]
    assert arrangement_plan("lcg_then_gsg", 5) == [L, L, L, G, G]  # the middle step goes to the first half
    assert arrangement_plan("gsg_then_lcg", 4) == [G, G, L, L]
    assert arrangement_plan("gsg_then_lcg", 5) == [G, G, G, L, L]
    assert arrangement_plan("lcg_then_gsg", 1) == [L]
    assert arrangement_plan("gsg_then_lcg", 1) == [G]
    for name in ARRANGEMENTS:
        assert arrangement_plan(name, 0) == []


def test_randmix_reproducible_and_seeded():
    a = arrangement_plan("randmix", 64, seed=0)
    assert a == arrangement_plan("randmix", 64, seed=0)
    assert a != arrangement_plan("randmix", 64, seed=1)
    assert set(a) == {"lcg", "gsg"}
    assert 16 < a.count("lcg") < 48
    assert arrangement_plan("randmix", 10, seed=0) == a[:10]  # prefix-stable


def test_arrangement_errors():
    with pytest.raises(ValueError, match="alternate.*lcg_then_gsg.*gsg_then_lcg.*randmix"):
        arrangement_plan("zigzag", 4)
    with pytest.raises(ValueError):
        arrangement_plan("alternate", -1)


# ----------------------------------------------------------------------------------- SemanticGuidance
def mean_shift(sg, x, step, num_steps, variance=0.5):
    """What the guided step subtracts from the mean: ``lambda * Sigma * G`` (mean = 0)."""
    out = sg(x, torch.zeros_like(x), torch.tensor(variance), step, num_steps)
    return None if out is None else -out


def test_semantic_guidance_follows_plan_and_scales(guide):
    x, label = make_batch()
    sg = SemanticGuidance(imagenet_preprocess, guide, label, scale=3.0)
    assert sg.mode == "sgg" and sg.plan(4) == ["lcg", "gsg", "lcg", "gsg"]
    lcg = lcg_grad(x, label, imagenet_preprocess, guide)
    gsg = gsg_grad(x, label, imagenet_preprocess, guide)
    # mu_hat = mu - lambda * Sigma * G: the minus sign, Sigma and lambda in one place
    torch.testing.assert_close(mean_shift(sg, x, 0, 4), 3.0 * 0.5 * lcg)
    torch.testing.assert_close(mean_shift(sg, x, 1, 4), 3.0 * 0.5 * gsg)
    torch.testing.assert_close(mean_shift(sg, x, 2, 4, variance=0.25), 3.0 * 0.25 * lcg)
    assert [s.kind for s in sg.stats] == ["lcg", "gsg", "lcg"]
    assert [s.step for s in sg.stats] == [0, 1, 2]
    st = sg.stats[0]
    assert st.num_steps == 4 and st.loss > 0 and st.scale == 3.0
    assert st.grad_norm == pytest.approx(float(lcg.flatten(1).norm(dim=1).mean()), rel=1e-5)
    assert st.scaled_norm == pytest.approx(3.0 * st.grad_norm, rel=1e-6)
    # shift over sigma: RMS of lambda Sigma G over each image's labelled pixels / sigma, batch mean
    counted = (label != IGNORE).flatten(1).sum(1).clamp_min(1) * 3
    rms = ((3.0 * 0.5 * lcg).pow(2).flatten(1).sum(1) / counted).sqrt()
    assert st.shift_over_sigma == pytest.approx(float((rms / 0.5**0.5).mean()), rel=1e-5)
    assert set(st.as_dict()) == {"step", "num_steps", "kind", "loss", "grad_norm", "scale", "scaled_norm",
                                 "shift_over_sigma"}
    sg.reset_stats()
    assert sg.stats == []
    with pytest.raises(IndexError):
        sg(x, x, torch.tensor(0.5), 4, 4)


def test_semantic_guidance_single_kind_modes(guide):
    x, label = make_batch()
    only_lcg = SemanticGuidance(imagenet_preprocess, guide, label, scale=2.0, gsg=False)
    only_gsg = SemanticGuidance(imagenet_preprocess, guide, label, scale=2.0, lcg=False)
    assert only_lcg.mode == "lcg_only" and only_lcg.plan(3) == ["lcg"] * 3
    assert only_gsg.mode == "gsg_only" and only_gsg.plan(3) == ["gsg"] * 3
    torch.testing.assert_close(mean_shift(only_lcg, x, 1, 3, 1.0), 2.0 * lcg_grad(x, label, imagenet_preprocess, guide))
    torch.testing.assert_close(mean_shift(only_gsg, x, 0, 3, 1.0), 2.0 * gsg_grad(x, label, imagenet_preprocess, guide))


def test_semantic_guidance_disabled_returns_none_without_calling_guide():
    def net(z):
        raise AssertionError("guide must not be called")

    x, label = make_batch()
    for kw in ({"scale": 0.0}, {"lcg": False, "gsg": False}, {"calibrate": True, "shift": 0.0}):
        sg = SemanticGuidance(imagenet_preprocess, net, label, **kw)
        assert sg.mode == "none" and not sg.enabled
        assert mean_shift(sg, x, 0, 3) is None
        assert sg.stats == []


def test_semantic_guidance_label_reuse_and_replacement(guide):
    x, label = make_batch()
    sg = SemanticGuidance(imagenet_preprocess, guide, label.to(torch.uint8), scale=1.0, gsg=False)
    torch.testing.assert_close(mean_shift(sg, x, 0, 2, 1.0), lcg_grad(x, label, imagenet_preprocess, guide))
    new = torch.flip(label, dims=[0])
    sg.label = new
    torch.testing.assert_close(mean_shift(sg, x, 1, 2, 1.0), lcg_grad(x, new, imagenet_preprocess, guide))


def test_calibrated_lambda_sets_the_shift_per_image(guide):
    """calibrate: lambda_i = shift * sigma / RMS_i(Sigma G), so every labelled image moves by shift * sigma."""
    x, label = make_batch()
    for kind, step in (("lcg", 0), ("gsg", 1)):
        for variance in (1e-4, 0.02):
            sg = SemanticGuidance(imagenet_preprocess, guide, label, calibrate=True, shift=0.1, scale=123.0)
            d = mean_shift(sg, x, step, 2, variance)
            labelled = (label != IGNORE)[:, None].expand_as(d)
            for i in range(3):  # images 0-2 have labels; image 3 has none and must not move
                rms = d[i][labelled[i]].pow(2).mean().sqrt()
                assert float(rms) == pytest.approx(0.1 * variance**0.5, rel=1e-4), (kind, variance, i)
            assert torch.equal(d[3], torch.zeros_like(d[3]))
            assert torch.all(d[~labelled] == 0)
            assert sg.stats[0].kind == kind
            assert sg.stats[0].shift_over_sigma == pytest.approx(0.1 * 3 / 4, rel=1e-4)  # batch mean incl. image 3


# ----------------------------------------------------------------------------------- settings
def test_settings_are_validated_once_with_one_line_errors():
    ok = validate_guidance({"scale": 5, "calibrate": True, "shift": 0.2, "max_batch": "auto",
                            "autocast_dtype": "bf16"}, {"name": "randmix", "seed": 2})
    assert ok == GuidanceSettings(scale=5.0, calibrate=True, shift=0.2, arrangement="randmix", seed=2,
                                  max_batch="auto", autocast_dtype=torch.bfloat16)
    assert validate_guidance({"max_batch": "all"}).max_batch is None
    bad = [
        ({"scale": -1}, None, "guidance.scale"),
        ({"scale": float("nan")}, None, "guidance.scale"),
        ({"shift": -0.1, "calibrate": True}, None, "guidance.shift"),
        ({"calibrate": "yes"}, None, "guidance.calibrate"),
        ({"reduction": "avg"}, None, "guidance.reduction"),
        ({"lcg": 1}, None, "guidance.lcg"),
        ({"max_batch": 0}, None, "guidance.max_batch"),
        ({"max_batch": "some"}, None, "guidance.max_batch"),
        ({"autocast_dtype": "int8"}, None, "guidance.autocast_dtype"),
        ({"lamda": 3}, None, "unknown keys"),
        ({"name": "sgg"}, None, "unknown keys"),          # no dead setting: the option file is the name
        ({}, {"name": "zigzag"}, "arrangement.name"),
        ({}, {"name": "randmix", "seed": "a"}, "arrangement.seed"),
        ({}, {"name": "alternate", "sed": 1}, "unknown keys"),
    ]
    for g, a, match in bad:
        with pytest.raises(ConfigError, match=match) as err:
            validate_guidance(g, a)
        assert "\n" not in str(err.value)


def test_bf16_autocast_gradient_close_to_fp32(guide):
    x, label = make_batch()
    full = SemanticGuidance(imagenet_preprocess, guide, label, scale=1.0)
    half = SemanticGuidance(imagenet_preprocess, guide, label, scale=1.0, autocast_dtype=torch.bfloat16)
    for step in (0, 1):
        a, b = mean_shift(full, x, step, 2), mean_shift(half, x, step, 2)
        assert b.dtype == x.dtype
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98


def test_make_guidance_from_config(guide):
    _, label = make_batch()
    sg = make_guidance(
        imagenet_preprocess,
        guide,
        label,
        {"scale": 5, "reduction": "mean", "lcg": True, "gsg": True},
        {"name": "randmix", "seed": 3},
    )
    assert isinstance(sg, SemanticGuidance)
    s = sg.settings
    assert (s.scale, s.reduction, s.arrangement, s.seed, s.calibrate) == (5.0, "mean", "randmix", 3, False)
    assert sg.plan(20) == arrangement_plan("randmix", 20, seed=3)
    d = make_guidance(imagenet_preprocess, guide, label, {})
    assert (d.settings.scale, d.settings.reduction, d.settings.arrangement, d.mode) == (80.0, "sum", "alternate", "sgg")
    assert (
        make_guidance(imagenet_preprocess, guide, label, {"lcg": True, "gsg": False}, "alternate").mode
        == "lcg_only"
    )
    assert make_guidance(imagenet_preprocess, guide, label, None) is None
    assert make_guidance(imagenet_preprocess, guide, label, {"scale": 0}) is None
    assert make_guidance(imagenet_preprocess, guide, label, {"calibrate": True, "shift": 0}) is None
    assert make_guidance(imagenet_preprocess, guide, label, {"lcg": False, "gsg": False}) is None
    with pytest.raises(ConfigError, match="unknown keys"):
        make_guidance(imagenet_preprocess, guide, label, {"lamda": 3})
    with pytest.raises(ConfigError, match="unknown guidance arrangement"):
        make_guidance(imagenet_preprocess, guide, label, {}, {"name": "zigzag"})
    bf = make_guidance(imagenet_preprocess, guide, label, {"autocast_dtype": "bf16"})
    assert bf.settings.autocast_dtype is torch.bfloat16
    checked = validate_guidance({"scale": 2.0})  # checked settings pass straight through
    assert make_guidance(imagenet_preprocess, guide, label, checked).settings is checked


def test_make_guidance_accepts_omegaconf(guide):
    from omegaconf import OmegaConf

    _, label = make_batch()
    cfg = OmegaConf.create(
        {
            "guidance": {"scale": 2.5, "reduction": "sum", "lcg": False, "gsg": True},
            "arrangement": {"name": "lcg_then_gsg", "seed": 0},
        }
    )
    sg = make_guidance(imagenet_preprocess, guide, label, cfg.guidance, cfg.arrangement)
    assert sg.mode == "gsg_only" and sg.settings.scale == 2.5 and sg.settings.arrangement == "lcg_then_gsg"
    assert make_guidance(imagenet_preprocess, guide, label, OmegaConf.create({"scale": 0.0})) is None


def test_config_group_files_are_valid_settings():
    """Every conf/guidance and conf/arrangement file passes validate_guidance (a file extending another, e.g.
    gsg_only over sgg, as composed)."""
    from pathlib import Path

    from dasslab.workflow.plan import load_option

    root = Path(__file__).resolve().parents[1] / "conf"
    arrangements = sorted(p.stem for p in (root / "arrangement").glob("*.yaml"))
    for g in sorted(p.stem for p in (root / "guidance").glob("*.yaml")):
        guidance = load_option("guidance", g)
        for a in arrangements:
            s = validate_guidance(guidance, load_option("arrangement", a))
            assert s.mode == g and "name" not in guidance   # the file is its name: no dead setting


def test_the_sgg_option_restates_the_library_defaults_except_what_it_chooses():
    """The guidance settings have their defaults in :class:`GuidanceSettings` (what ``validate_guidance`` fills in
    for a key a mapping leaves out: the quality analysis' settings rely on it); ``conf/guidance/sgg.yaml`` lists
    every key for the command line and chooses three values of its own (calibrated lambda, its shift chosen per
    pair by the calibration, chunked LCG copies).
    A default changed in one place and not the other fails here."""
    from omegaconf import OmegaConf

    from dasslab.guidance.settings import GuidanceSettings
    from dasslab.workflow.plan import load_option

    sgg = OmegaConf.to_container(load_option("guidance", "sgg"))
    library = GuidanceSettings()
    differ = {k for k, v in sgg.items() if getattr(library, k) != v and not (k == "autocast_dtype" and v is None)}
    assert differ == {"calibrate", "max_batch", "shift"} and sgg["shift"] == "auto"
