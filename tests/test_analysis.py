"""Translation-quality instruments: judge consistency, the noise-robust domain score, the plan."""

import torch
from omegaconf import OmegaConf
from torch import nn

from dasslab.analysis.domain_score import domain_score, train_domain_classifier
from dasslab.analysis.judge import foreground_classes, label_consistency
from dasslab.analysis.translation_quality import setting_plan
from dasslab.diffusion.schedule import NoiseSchedule


class Oracle(nn.Module):
    """A 'segmenter' that returns the given predictions (one-hot logits), batch after batch."""

    def __init__(self, pred: torch.Tensor, k: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))  # a parameter, so that the device can be read
        self.pred, self.k = pred, k

    def forward(self, x):
        out = nn.functional.one_hot(self.pred[: len(x)], self.k).permute(0, 3, 1, 2).float() * 10
        self.pred = self.pred[len(x):]
        return out


def test_foreground_classes_by_name():
    assert foreground_classes(["background", "0", "1"]) == [1, 2]
    assert foreground_classes(["Sky", "road", "car"], exclude=["sky", "road"]) == [2]


def test_consistency_all_vs_foreground_closed_form():
    """All-background predictions: background IoU = bg fraction, digits 0 -> fg mIoU 0 while mIoU > 0."""
    k = 3
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, :2, :2] = 1
    labels[:, 2:, 2:] = 2                                   # bg 8/16 of pixels
    pred = torch.zeros_like(labels)                          # everything called background
    c = label_consistency(Oracle(pred, k), torch.zeros(2, 3, 4, 4), labels, k, foreground=[1, 2], batch_size=1)
    assert abs(c["miou"] - 100 * 0.5 / 3) < 1e-6            # (50 + 0 + 0) / 3
    assert c["miou_fg"] == 0.0
    perfect = label_consistency(Oracle(labels.clone(), k), torch.zeros(2, 3, 4, 4), labels, k, foreground=[1, 2])
    assert perfect == {"miou": 100.0, "miou_fg": 100.0}


def test_noise_trained_domain_score_is_not_fooled_by_noise():
    """Source: flat colour; target: textured. Noise on both domains in training -> noisy source stays source."""
    g = torch.Generator().manual_seed(0)
    n, s = 256, 16
    source = (torch.rand(n, 3, 1, 1, generator=g) * 1.6 - 0.8).expand(n, 3, s, s).clone()
    target = (torch.rand(n, 3, s, s, generator=g) * 2 - 1).clamp(-1, 1)
    target = nn.functional.avg_pool2d(target, 3, 1, 1) * 2                # smooth-ish texture
    sched = NoiseSchedule.linear()
    clf = train_domain_classifier(source[:200], target[:200], sched.q_sample, t_max=600, steps=150,
                                  batch_size=32, seed=0)
    src_val, tgt_val = source[200:], target[200:]
    noisy = sched.q_sample(src_val, torch.full((len(src_val),), 299), torch.randn(src_val.shape, generator=g))
    assert domain_score(clf, src_val) < 0.2
    assert domain_score(clf, tgt_val) > 0.8
    assert domain_score(clf, noisy) < 0.5
    assert 0.0 <= domain_score(clf, noisy) <= 1.0


def test_setting_plan_uses_own_depths_or_the_default():
    q = OmegaConf.create({"depths": [100, 200], "settings": {
        "unguided": {"scale": 0.0}, "sgg": {"scale": 1.0, "lcg": True, "depths": [400]}}})
    plan = setting_plan(q)
    assert plan == [("unguided", {"scale": 0.0}, 100), ("unguided", {"scale": 0.0}, 200),
                    ("sgg", {"scale": 1.0, "lcg": True}, 400)]
