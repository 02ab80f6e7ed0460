"""Target self-training (adapt.self_training): the teacher's EMA, pseudo-label weights, ClassMix masks and the
weighted loss against hand-computed cases; in a fit, the teacher follows the EMA recurrence of the segmenter,
the term reads its own target stream and pastes the translated batch; resume is exact with it on; bad
settings fail at config time with one line."""

# ruff: noqa: F811  (the fixtures adapt_cfg / trained come from test_ptl and are redefined as parameters)
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_ptl import adapt_cfg, build, same, state, trained, trainer  # noqa: F401  (fixtures)

from dasslab.errors import ConfigError
from dasslab.segmentation import self_training as st

ST_ON = ["adapt.self_training.enabled=true", "adapt.self_training.ema=0.9"]


# --------------------------------------------------------------------------- the pieces
def test_ema_alpha_warms_up_then_caps():
    assert st.ema_alpha(0, 0.999) == 0.0                     # h_0 = g_0
    assert st.ema_alpha(1, 0.999) == pytest.approx(0.5)
    assert st.ema_alpha(9, 0.999) == pytest.approx(0.9)
    assert st.ema_alpha(10_000, 0.999) == pytest.approx(0.999)
    assert st.ema_alpha(3, 0.6) == pytest.approx(0.6)        # min(0.75, 0.6)


def test_ema_update_averages_parameters_and_bn_statistics_and_copies_the_counter():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    student.train()(torch.randn(2, 3, 4, 4))                # moves the student's running statistics
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    st.ema_update(teacher, student, 0.75)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.75 * t0[k] + 0.25 * s0[k]), k
        else:
            assert torch.equal(v, s0[k]), k                   # num_batches_tracked
    st.ema_update(teacher, student, 0.0)
    assert same(teacher.state_dict(), student.state_dict())


def test_pseudo_labels_and_their_weight_by_hand():
    # 2 images, 3 classes, 1 x 2 pixels: softmax confidences computed by hand
    logits = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]], [[0.0, 1.0]]],
                           [[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]])
    labels, q = st.pseudo_labels(logits, threshold=0.9)
    assert labels.tolist() == [[[0, 2]], [[0, 0]]]
    p00 = math.exp(4) / (math.exp(4) + 2)                    # 0.9647 > 0.9
    p01 = math.e / (math.e + 2)                              # 0.576
    assert p00 > 0.9 > p01
    assert q.tolist() == pytest.approx([0.5, 0.0])           # one of two pixels confident; none (1/3 each)


def test_classmix_pastes_half_of_the_present_classes_never_ignore_pixels():
    y = torch.tensor([[[0, 0, 3, 3], [5, 5, 255, 255]],
                      [[255, 255, 255, 255], [255, 255, 255, 255]],
                      [[7, 7, 7, 7], [7, 7, 7, 7]]])
    seen = set()
    for seed in range(20):
        m = st.classmix_masks(y, torch.Generator().manual_seed(seed))
        chosen = set(torch.unique(y[0][m[0]]).tolist())
        assert len(chosen) == 2 and chosen <= {0, 3, 5}       # ceil(3 / 2) whole classes
        assert torch.equal(m[0], torch.isin(y[0], torch.tensor(sorted(chosen))))
        assert not m[0][y[0] == 255].any()
        assert not m[1].any()                                  # nothing labelled: nothing pasted
        assert m[2].all()                                      # ceil(1 / 2) = 1: the one class
        seen.add(tuple(sorted(chosen)))
    assert len(seen) == 3                                      # every pair is drawn
    a = st.classmix_masks(y, torch.Generator().manual_seed(4))
    b = st.classmix_masks(y, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_mix_images_labels_and_weights_by_hand():
    image = torch.full((1, 3, 1, 3), 0.5)
    target = torch.full((1, 3, 1, 3), -0.5)
    label = torch.tensor([[[1, 2, 255]]])
    pseudo = torch.tensor([[[0, 0, 4]]])
    mask = torch.tensor([[[True, False, False]]])
    x, y, w = st.mix(image, label, target, pseudo, torch.tensor([0.25]), mask)
    assert x[0, :, 0].tolist() == [[0.5, -0.5, -0.5]] * 3
    assert y.tolist() == [[[1, 0, 4]]]
    assert w.tolist() == [[[1.0, 0.25, 0.25]]]


def test_weighted_ce_is_the_mean_over_all_pixels_of_weight_times_ce():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, 1.0]]]])
    label = torch.tensor([[[0, 0, 255]]])
    weight = torch.tensor([[[1.0, 0.5, 1.0]]])
    ce0 = -F.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    ce1 = -F.log_softmax(torch.tensor([0.0, 1.0]), 0)[0]
    expected = (1.0 * ce0 + 0.5 * ce1 + 0.0) / 3
    assert st.weighted_ce(logits, label, weight).item() == pytest.approx(expected.item())


def test_strong_augment_is_seeded_and_off_when_disabled():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    assert torch.equal(st.strong_augment(x, torch.Generator().manual_seed(0), jitter=0.0, blur=False), x)
    a = st.strong_augment(x, torch.Generator().manual_seed(1), p_jitter=1.0, p_blur=1.0)
    b = st.strong_augment(x, torch.Generator().manual_seed(1), p_jitter=1.0, p_blur=1.0)
    c = st.strong_augment(x, torch.Generator().manual_seed(2), p_jitter=1.0, p_blur=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert a.min() >= -1 and a.max() <= 1


# --------------------------------------------------------------------------- in a fit
class TeacherRecorder:
    """Per step: the segmenter and the teacher when the step starts, and what the term received."""

    def __init__(self, module):
        self.model_at, self.teacher_after_update, self.calls = {}, {}, {}
        original, update = module.self_training_loss, module.update_teacher

        def spy_update(step):
            self.model_at[step] = state(module, "model.")
            update(step)
            self.teacher_after_update[step] = state(module, "teacher.")

        def spy(parts, target, step):
            out = original(parts, target, step)
            self.calls[step] = {"target": target.detach().clone(),
                                "mixed": module.mix_key(parts), "labels": parts[module.mix_key(parts)]["label"].clone()}
            return out

        module.self_training_loss, module.update_teacher = spy, spy_update


def test_the_teacher_follows_the_ema_of_the_segmenter_and_reads_its_own_target_stream(adapt_cfg, tmp_path):
    from dasslab.ptl.data import TARGET

    cfg = adapt_cfg(*ST_ON)
    dm, module = build(cfg)
    assert module.self_training and TARGET in dm.train_sets
    rec = TeacherRecorder(module)
    t = trainer(tmp_path, 5)
    t.fit(module, datamodule=dm)
    assert sorted(rec.calls) == [0, 1, 2, 3, 4]
    teacher = {k.replace("model.", "teacher.", 1): v for k, v in rec.model_at[0].items()}
    for s in range(5):
        alpha = st.ema_alpha(s, 0.9)
        expected = {}
        for k, v in rec.model_at[s].items():
            tk = k.replace("model.", "teacher.", 1)
            expected[tk] = alpha * teacher[tk] + (1 - alpha) * v if v.is_floating_point() else v
        got = rec.teacher_after_update[s]
        assert got.keys() == expected.keys()
        for k in got:
            assert torch.allclose(got[k], expected[k], atol=1e-6), (s, k)
        teacher = got
    # the teacher is not the guide: the guide stays the domain-start snapshot of the segmenter
    assert not same(state(module, "teacher."), {k.replace("guide.", "teacher.", 1): v
                                                for k, v in state(module, "guide.").items()})
    stream, source = dm.stream(TARGET), dm.stream()
    for s in range(5):
        assert torch.equal(rec.calls[s]["target"], stream.batch(s)["image"])     # unlabeled target images
        assert not torch.equal(rec.calls[s]["target"], source.batch(s)["image"])
        assert rec.calls[s]["mixed"] == "translated"                            # auto: PTL translates
        assert torch.equal(rec.calls[s]["labels"], source.batch(s)["label"])    # X^n carries the source labels
    assert "train/loss_st" in t.callback_metrics and "st/pseudo_weight" in t.callback_metrics


def test_self_training_alone_mixes_source_images(adapt_cfg, tmp_path):
    cfg = adapt_cfg("ptl=none", "guidance=none", "diffusion_ckpt=null", *ST_ON)
    from dasslab.ptl.config import validate_ptl

    validate_ptl(cfg)
    dm, module = build(cfg)
    assert module.train_keys == ["source"] and not module.translates
    rec = TeacherRecorder(module)
    trainer(tmp_path, 2).fit(module, datamodule=dm)
    assert [c["mixed"] for c in rec.calls.values()] == ["source", "source"]


def test_resume_with_self_training_continues_exactly(adapt_cfg, tmp_path):
    """Stop at step 3 of 6 and resume: the same teacher, segmenter, guide and optimiser as a run straight through."""
    cfg = adapt_cfg(*ST_ON)
    dm, full = build(cfg)
    trainer(tmp_path / "full", 6).fit(full, datamodule=dm)
    dm, first = build(cfg)
    t_first = trainer(tmp_path / "first", 3)
    t_first.fit(first, datamodule=dm)
    t_first.save_checkpoint(tmp_path / "stop.ckpt")
    ck = torch.load(tmp_path / "stop.ckpt", weights_only=False)
    assert any(k.startswith("teacher.") for k in ck["state_dict"])
    dm2, resumed = build(cfg)
    trainer(tmp_path / "resumed", 6).fit(resumed, datamodule=dm2, ckpt_path=tmp_path / "stop.ckpt")
    assert same(state(resumed, ""), state(full, ""))
    assert not same(state(full, "teacher."), {k.replace("model.", "teacher.", 1): v
                                              for k, v in state(full, "model.").items()})


@pytest.mark.parametrize("overrides, match", [
    (["adapt.self_training.enabled=true", "adapt.self_training.ema=1.0"],
     r"adapt.self_training.ema=1.0: expected a number in \[0, 1\)"),
    (["adapt.self_training.enabled=true", "adapt.self_training.threshold=1.5"],
     r"adapt.self_training.threshold=1.5: expected a number in \[0, 1\]"),
    (["adapt.self_training.enabled=yes"], r"adapt.self_training.enabled='yes': expected true or false"),
    (["adapt.self_training.enabled=true", "adapt.self_training.mix=target"],
     r"adapt.self_training.mix='target': expected one of auto, source, translated"),
    (["adapt.self_training.enabled=true", "adapt.self_training.mix=translated", "ptl=none", "guidance=none"],
     r"adapt.self_training.mix=translated with ptl=none: nothing is translated"),
    (["+adapt.self_training.tau=0.9"], r"adapt.self_training.tau: unknown setting"),
    (["adapt.self_training.enabled=true", "dataset.target=null"],
     r"adapt.self_training.enabled=true: dataset=digits has no target-train images \(dataset.target\)"),
])
def test_bad_self_training_settings_fail_at_config_time_with_one_line(adapt_cfg, overrides, match):
    from dasslab.ptl.config import validate_self_training

    with pytest.raises(ConfigError, match=match) as e:
        validate_self_training(adapt_cfg(*overrides))
    assert "\n" not in str(e.value)


def test_a_switched_off_self_training_section_stays_out_of_the_cache_key(adapt_cfg):
    """Runs without self-training keep their cached results whatever its (unread) values; with it on, they count."""
    from dasslab.workflow.plan import stage_key

    base = stage_key(adapt_cfg("stage=adapt"))
    assert stage_key(adapt_cfg("stage=adapt", "adapt.self_training.ema=0.5")) == base
    on = stage_key(adapt_cfg("stage=adapt", "adapt.self_training.enabled=true"))
    on_other = stage_key(adapt_cfg("stage=adapt", "adapt.self_training.enabled=true", "adapt.self_training.ema=0.5"))
    assert len({base, on, on_other}) == 3
