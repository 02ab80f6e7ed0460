"""The DDPM's EMA with a warmed-up decay: the closed form, and why a short run needs it."""

import torch
from torch.optim.swa_utils import AveragedModel

from dasslab.callbacks.ema import WarmupEMA, warmup_ema_avg_fn


def _average(values, avg_fn):
    p = torch.nn.Parameter(torch.zeros(()))
    model = torch.nn.ParameterList([p])
    avg = AveragedModel(model, avg_fn=avg_fn, use_buffers=True)
    for v in values:
        with torch.no_grad():
            p.fill_(v)
        avg.update_parameters(model)
    return float(avg.module[0])


def test_warmup_ema_matches_its_closed_form():
    values = [float(v) for v in torch.linspace(0, 5, 40)]
    decay = 0.99
    ema = values[0]                                   # the first update copies the weights
    for n, v in enumerate(values[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * v
    assert abs(_average(values, warmup_ema_avg_fn(decay)) - ema) < 1e-5


def test_a_short_run_average_follows_the_model_with_warmup_and_not_without():
    """1,200 steps from a weight of 0 to 1: the plain 0.999 EMA still holds ~30 % of the start."""
    values = [min(1.0, i / 600) for i in range(1200)]
    plain = _average(values, lambda e, c, n: 0.999 * e + 0.001 * c)
    warm = _average(values, warmup_ema_avg_fn(0.999))
    assert plain < 0.75 and warm > 0.97


def test_the_callback_carries_the_warmup_avg_fn_only_when_asked():
    e, c, n = torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1)
    warm = WarmupEMA(decay=0.9, warmup=True)._kwargs["avg_fn"]
    plain = WarmupEMA(decay=0.9, warmup=False)._kwargs["avg_fn"]
    assert abs(float(warm(e, c, n)) - 2 / 11) < 1e-6      # d_1 = (1 + 1) / (10 + 1)
    assert abs(float(plain(e, c, n)) - 0.9) < 1e-6         # no warmup: the decay from the first update


def test_the_diffusion_stage_uses_it(compose, tmp_path):
    cfg = compose("debug=smoke", "stage=diffusion", f"paths.output_dir={tmp_path}")
    assert cfg.stage.callbacks.ema._target_ == "dasslab.callbacks.ema.WarmupEMA"
    assert cfg.stage.callbacks.ema.warmup is True and cfg.stage.callbacks.ema.decay == cfg.diffusion.ema_decay
