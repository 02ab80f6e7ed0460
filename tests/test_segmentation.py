"""Segmentation models: shapes, gradients, sizes, normalisation, param groups, weights I/O.

The big models are built once per module (lazily) and fed small, odd-sized images.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from dasslab.segmentation import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEGMENTER_NAMES,
    Segmenter,
    WeightsError,
    build_segmenter,
    load_weights,
)
from dasslab.segmentation import weights as W

K = 19
BIG = ("deeplabv2_r101", "fcn8s_vgg16", "daformer_mitb5")
ALL = BIG + ("small",)
# Plausible ranges (19 classes). DeepLab-V2: ResNet-101 trunk 42.5 M + 4 ASPP 3x3 convs 2048->19.
PARAM_RANGE = {
    "deeplabv2_r101": (43.0e6, 45.0e6),
    "fcn8s_vgg16": (130e6, 138e6),
    "daformer_mitb5": (84e6, 87e6),
    "small": (0.3e6, 0.6e6),
}


@pytest.fixture(scope="module")
def model():
    cache: dict[str, Segmenter] = {}

    def get(name: str) -> Segmenter:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_segmenter(name, K)
        return cache[name]

    return get


def _images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def test_names_and_unknown_name():
    assert set(SEGMENTER_NAMES) == set(ALL)
    with pytest.raises(ValueError) as e:
        build_segmenter("resnet9000", K)
    for name in ALL:
        assert name in str(e.value)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(model, name):
    m = model(name)
    m.train()
    x = _images(2, 33, 47)  # odd size: logits must come back at exactly this size
    logits = m(x)
    assert logits.shape == (2, K, 33, 47)
    assert torch.isfinite(logits).all()
    y = torch.randint(0, K, (2, 33, 47))
    y[:, :3] = 255
    F.cross_entropy(logits, y, ignore_index=255).backward()
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("backbone."))
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if n.startswith("head."))
    m.zero_grad(set_to_none=True)


def test_parameter_counts(model, capsys):
    counts = {name: model(name).num_parameters() for name in ALL}
    with capsys.disabled():
        print("\nsegmenter parameters (19 classes): " + ", ".join(f"{n} {c / 1e6:.2f} M" for n, c in counts.items()))
    for name, c in counts.items():
        lo, hi = PARAM_RANGE[name]
        assert lo <= c <= hi, f"{name}: {c} parameters not in [{lo}, {hi}]"


@pytest.mark.parametrize("name", ALL)
def test_param_groups_cover_each_parameter_once(model, name):
    m = model(name)
    groups = m.param_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, m.head_lr_mult]
    if name in BIG:
        assert m.head_lr_mult == 10.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in m.backbone.parameters()}
    # usable by a torch optimizer as they are
    torch.optim.SGD([{"params": g["params"], "lr": 2.5e-4 * g["lr_mult"]} for g in groups], lr=2.5e-4)


def test_normalize_closed_form():
    m = build_segmenter("small", 3)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for v, u in ((-1.0, 0.0), (0.0, 0.5), (1.0, 1.0)):
        z = m.normalize(torch.full((1, 3, 2, 2), v))
        torch.testing.assert_close(z, ((u - mean) / std).expand(1, 3, 2, 2))
    x = _images(2, 8, 8)
    torch.testing.assert_close(m.denormalize(m.normalize(x)), x, atol=1e-6, rtol=0)
    assert "mean" not in m.state_dict() and m.mean.shape == (1, 3, 1, 1)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_normalized(m.normalize(x)))


def test_freeze_bn_defaults(model):
    bn = torch.nn.modules.batchnorm._BatchNorm
    d = model("deeplabv2_r101")
    assert d.freeze_bn
    d.train()
    bns = [mod for mod in d.backbone.modules() if isinstance(mod, bn)]
    assert bns and all(not mod.training for mod in bns)
    assert all(not p.requires_grad for mod in bns for p in mod.parameters())
    s = build_segmenter("small", 4, freeze_bn=True).train()
    assert all(not mod.training for mod in s.backbone.modules() if isinstance(mod, bn))
    assert all(mod.training for mod in s.head.modules() if isinstance(mod, bn))
    assert not model("daformer_mitb5").freeze_bn and not build_segmenter("small", 4).freeze_bn
    # ``null`` in a config means the model's default
    assert build_segmenter("small", 4, freeze_bn=None, head_lr_mult=None).head_lr_mult == 1.0


def test_small_sizes_and_bf16():
    m = build_segmenter("small", 11).eval()
    with torch.no_grad():
        for h, w in ((32, 32), (24, 40), (30, 30), (7, 9)):
            assert m(_images(1, h, w)).shape == (1, 11, h, w)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(_images(2, 32, 32))
    assert torch.isfinite(out.float()).all()
    m2 = build_segmenter("small", 11, norm="gn", widths=(8, 16, 32, 64))
    assert m2(_images(1, 16, 16)).shape == (1, 11, 16, 16)


# ---------------------------------------------------------------------------------- weights


@pytest.fixture
def no_cache(tmp_path, monkeypatch):
    """Empty torch/HF caches, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def _assert_how_to(msg: str):
    assert "backbone.weights" in msg and "backbone.pretrained" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", BIG)
def test_pretrained_offline_without_cache_raises(no_cache, name):
    with pytest.raises(WeightsError) as e:
        build_segmenter(name, K, pretrained=True)
    assert isinstance(e.value, RuntimeError)
    _assert_how_to(str(e.value))
    assert "HF_HUB_OFFLINE" in str(e.value)


def test_pretrained_download_failure_raises(no_cache, monkeypatch):
    """Not offline, but the host refuses: one clear error, no retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DASSLAB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setitem(
        W.IMAGENET_SOURCES, "deeplabv2_r101", lambda: W.TorchvisionFile("http://127.0.0.1:9/resnet101-63fe2227.pth")
    )
    with pytest.raises(WeightsError) as e:
        W.fetch_imagenet_weights("deeplabv2_r101")
    _assert_how_to(str(e.value))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(WeightsError) as e:
        W.fetch_imagenet_weights("daformer_mitb5")
    _assert_how_to(str(e.value))


def test_pretrained_small_needs_a_file(no_cache, tmp_path):
    with pytest.raises(WeightsError) as e:
        build_segmenter("small", 5, pretrained=True)
    _assert_how_to(str(e.value))
    path = tmp_path / "small.pt"
    torch.save(build_segmenter("small", 5).state_dict(), path)
    build_segmenter("small", 5, pretrained=True, weights=str(path))


def test_weights_round_trip(tmp_path):
    torch.manual_seed(1)
    a = build_segmenter("small", 7).eval()
    with torch.no_grad():  # make BN statistics non-trivial so that buffers are checked too
        for mod in a.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    x = _images(2, 24, 32)
    with torch.no_grad():
        ref = a(x)
    plain = tmp_path / "plain.pt"
    torch.save(a.state_dict(), plain)
    # a Lightning-style checkpoint with a wrapper prefix and extra entries
    ckpt = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in a.state_dict().items()}}, ckpt)
    # the encoder alone, plus the head from the full file
    enc = tmp_path / "encoder.pt"
    torch.save({f"module.{k}": v for k, v in a.backbone.state_dict().items()}, enc)
    for path in (plain, ckpt):
        torch.manual_seed(2)
        b = build_segmenter("small", 7, weights=str(path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(b(x), ref)
    torch.manual_seed(3)
    c = build_segmenter("small", 7).eval()
    report = load_weights(c, enc)
    assert report.missing and all(k.startswith("head.") for k in report.missing)
    c.head.load_state_dict(a.head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(c(x), ref)


def test_weights_missing_or_mismatched(tmp_path, model):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError) as e:
        build_segmenter("small", 7, weights=str(missing))
    assert str(missing) in str(e.value) and "backbone.weights" in str(e.value)

    junk = tmp_path / "junk.pt"
    torch.save({"foo.weight": torch.zeros(3), "bar.bias": torch.zeros(2)}, junk)
    with pytest.raises(WeightsError) as e:
        build_segmenter("small", 7, weights=str(junk))
    assert str(junk) in str(e.value) and "0 of its 2 tensors" in str(e.value)

    # a small model's file does not fit DeepLab-V2 at all (checked before anything is loaded)
    small = tmp_path / "small.pt"
    torch.save(build_segmenter("small", K).state_dict(), small)
    with pytest.raises(WeightsError, match="0 of its"):
        load_weights(model("deeplabv2_r101"), small)

    # another number of classes: everything but the classifier loads, with a warning
    torch.save(build_segmenter("small", 11).state_dict(), small)
    with pytest.warns(UserWarning, match="shape mismatch"):
        rep = load_weights(build_segmenter("small", 7), small)
    assert rep.shape_mismatch and all("classifier" in s for s in rep.shape_mismatch)


def test_library_state_dicts_map_onto_backbones(model):
    """torchvision-style ResNet/VGG and smp-style MiT state dicts fill the whole backbone."""
    for name in BIG:
        m = model(name)
        sd = {k[len("backbone.") :]: v for k, v in m.state_dict().items() if k.startswith("backbone.")}
        if name == "fcn8s_vgg16":  # as torchvision stores it: fc6/fc7 as Linear, plus the ImageNet classifier
            sd["classifier.0.weight"] = sd.pop("fc6.weight").reshape(4096, -1)
            sd["classifier.0.bias"] = sd.pop("fc6.bias")
            sd["classifier.3.weight"] = sd.pop("fc7.weight").reshape(4096, 4096)
            sd["classifier.3.bias"] = sd.pop("fc7.bias")
            sd["classifier.6.weight"] = torch.zeros(1000, 4096)
        if name == "deeplabv2_r101":
            sd["fc.weight"] = torch.zeros(1000, 2048)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            rep = W.load_imagenet_state(m, name, sd, source=name)  # raises unless the backbone is covered
        assert not rep.shape_mismatch
        assert not [k for k in rep.missing if k.startswith("backbone.")], name
    with pytest.raises(WeightsError, match="does not fit"):
        W.load_imagenet_state(model("deeplabv2_r101"), "deeplabv2_r101", {"conv1.weight": torch.zeros(64, 3, 7, 7)},
                              "f")


def test_pretrained_found_in_cache_offline(no_cache):
    """Cached library files are used offline, without touching the network."""
    tv = no_cache / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    tv.parent.mkdir(parents=True)
    tv.write_bytes(b"x")
    assert W.fetch_imagenet_weights("deeplabv2_r101") == tv
    src = W.IMAGENET_SOURCES["daformer_mitb5"]()
    snap = no_cache / "hf" / "hub" / f"models--{src.repo_id.replace('/', '--')}" / "snapshots" / src.revision
    snap.mkdir(parents=True)
    (snap / src.filename).write_bytes(b"x")
    assert W.fetch_imagenet_weights("daformer_mitb5").resolve() == (snap / src.filename).resolve()


class _Touch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling creates the marker file
        return open, (self.marker, "w")


def test_a_cached_imagenet_file_that_would_run_code_is_refused(no_cache):
    """The library cache is read like any file: weights_only, no fallback to full unpickling."""
    from dasslab.errors import UnsafeCheckpointError

    tv = no_cache / "torch" / "hub" / "checkpoints" / "resnet101-63fe2227.pth"
    tv.parent.mkdir(parents=True)
    marker = no_cache / "MARKER"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Touch(marker)}, tv)
    assert W.fetch_imagenet_weights("deeplabv2_r101") == tv
    with pytest.raises(UnsafeCheckpointError, match=r"backbone.pretrained cache file=.*trust_checkpoint=true"):
        W.load_imagenet(build_segmenter("small", 3), "deeplabv2_r101", tv)
    assert not marker.exists()


def test_small_segmenter_options_reach_the_model_and_stem_stride_keeps_the_output_size():
    from dasslab.lit.segmenter_module import SegmenterModule

    module = SegmenterModule(backbone={"name": "small", "options": {"widths": [16, 32, 64], "stem_stride": 2}},
                             num_classes=5, class_names=list("abcde"), optim={}, max_steps=1)
    first = module.model.backbone.levels[0][0][0]
    assert first.stride == (2, 2) and first.out_channels == 16
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    assert module.model(x).shape == (2, 5, 32, 48)
    with pytest.raises(ValueError, match="stem_stride"):
        build_segmenter("small", 5, stem_stride=4)
