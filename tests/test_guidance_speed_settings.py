"""Speed settings that must not change results: LCG chunking (``max_batch``, ``auto``), no host syncs
in the reverse loop, denoiser autocast/compile options; and batched LCG == the per-class loop on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_guidance import IGNORE, MEAN, STD, TinyGuide, imagenet_preprocess, lcg_grad_loop, make_batch

from dasslab.diffusion import NoiseSchedule, Sampler
from dasslab.diffusion.sampler import sampler_options
from dasslab.guidance import SemanticGuidance, auto_max_batch, class_copies, copies_that_fit, lcg_grad

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one intra-op thread


def _shift(sg, x, step=0, num_steps=2):
    return -sg(x, torch.zeros_like(x), torch.tensor(1.0), step, num_steps)


@pytest.mark.parametrize("max_batch", [1, 4, "auto"])
def test_chunked_guided_step_equals_unchunked(max_batch):
    """Through the guided step: max_batch changes how many copies go through the guide, not the result."""
    net = TinyGuide()
    x, label = make_batch(3)
    calls: list[int] = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    whole = _shift(SemanticGuidance(imagenet_preprocess, net, label, scale=1.0, gsg=False), x)
    assert calls == [10]
    calls.clear()
    part = _shift(SemanticGuidance(imagenet_preprocess, net, label, scale=1.0, gsg=False, max_batch=max_batch), x)
    torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-6)
    # "auto" on CPU: all copies in one pass
    assert calls == {1: [1] * 10, 4: [4, 4, 2], "auto": [10]}[max_batch]


def test_auto_max_batch_is_all_copies_on_cpu():
    x, label = make_batch()
    copies = class_copies(label, IGNORE)

    def net(z):
        raise AssertionError("no probe on CPU")

    assert auto_max_batch(x, copies, imagenet_preprocess, net) == len(copies) == 10


def test_copies_that_fit_arithmetic():
    gib = 2**30
    assert copies_that_fit(80 * gib, 2 * gib, 16, fraction=0.5) == 16      # room for 20
    assert copies_that_fit(24 * gib, 2 * gib, 16, fraction=0.5) == 6       # 24 GiB card: 6 per pass
    assert copies_that_fit(1 * gib, 2 * gib, 16) == 1                      # never below one copy
    assert copies_that_fit(24 * gib, 0, 16) == 16


def test_reverse_loop_makes_no_host_sync(monkeypatch):
    """A guided translation reads nothing back per step: the one read is the statistics at the end."""
    sched = NoiseSchedule.linear()
    sampler = Sampler(sched, lambda x, t: 0.2 * x)
    x, label = make_batch()
    net = TinyGuide()
    run = lambda sg: sampler.translate(x, 40, 6, guidance=sg, generator=torch.Generator().manual_seed(0))  # noqa
    run(SemanticGuidance(imagenet_preprocess, net, label, calibrate=True, shift=0.1))  # warm the schedule caches
    for kw in ({"scale": 1.0}, {"calibrate": True, "shift": 0.1}):
        sg = SemanticGuidance(imagenet_preprocess, net, label, **kw)  # label prepared here: syncs allowed
        reads: list[str] = []
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _name=name, _original=original, _reads=reads, **k):
                _reads.append(_name)
                return _original(self, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counted)
        run(sg)
        monkeypatch.undo()
        assert reads == ["tolist"], reads  # Sampler._read_stats, after the loop
        assert len(sampler.stats) == 6 and all(s["shift_rms"] > 0 for s in sampler.stats)
        assert len(sg.stats) == 6


def test_sampler_options_from_config():
    cfg = {"compile": True, "autocast": "bf16"}
    assert sampler_options(cfg, "cuda") == {"compile": True, "autocast_dtype": "bf16"}
    assert sampler_options(cfg, "cpu") == {"compile": False, "autocast_dtype": None}  # off on CPU
    assert sampler_options({**cfg, "autocast_cpu": "bf16"}, "cpu")["autocast_dtype"] == "bf16"
    assert sampler_options(None) == {"compile": False, "autocast_dtype": None}
    with pytest.raises(ValueError, match="diffusion.autocast"):
        Sampler(NoiseSchedule.linear(), lambda x, t: x, autocast_dtype="int8")


def test_denoiser_autocast_runs_under_autocast_and_returns_the_image_dtype():
    seen = []

    def den(x, t):
        seen.append(torch.is_autocast_enabled("cpu"))
        return F.conv2d(x, torch.ones(3, 3, 1, 1) / 9)

    sched = NoiseSchedule.linear()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa
    full = Sampler(sched, den).translate(x, 30, 3, generator=gen())
    half = Sampler(sched, den, autocast_dtype="bf16").translate(x, 30, 3, generator=gen())
    assert seen == [False] * 3 + [True] * 3
    assert half.dtype == torch.float32
    assert (half - full).abs().max() < 0.05 and not torch.equal(half, full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("max_batch", [None, 3])
def test_batched_lcg_equals_per_class_loop_on_cuda_without_tf32(max_batch):
    """With TF32 off, batched (and chunked) LCG equals the per-class loop on the GPU as on the CPU."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        net = TinyGuide().cuda()
        x, label = (t.cuda() for t in make_batch())
        ref = lcg_grad_loop(x, label, imagenet_preprocess_cuda, net)
        got = lcg_grad(x, label, imagenet_preprocess_cuda, net, max_batch=max_batch)
        assert ref.abs().sum() > 0
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def imagenet_preprocess_cuda(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2 - MEAN.to(x.device)) / STD.to(x.device)
