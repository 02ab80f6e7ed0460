"""Feature extractors (encoders) of the segmenters.

Every backbone is an ``nn.Module`` whose ``forward(z)`` takes an image already in
the network's input space (ImageNet-normalised RGB) and returns a list of feature
maps, shallow to deep. Its parameter names equal those of the library model it
wraps, so that library ImageNet state dicts load into it unchanged (see
:mod:`dasslab.segmentation.weights`).

- :class:`ResNetBackbone`: torchvision ResNet-101 with dilated ``layer3``/``layer4``
  (output stride 8), as DeepLab-V2 uses it. torchvision's ResNet is the "v1.5"
  variant (stride in the 3x3 conv); the original Caffe DeepLab model strides in
  the first 1x1 conv. The difference is irrelevant to shapes and parameter count.
- :class:`VGG16Backbone`: torchvision VGG16 (no BatchNorm) ``features`` plus fc6/fc7
  recast as convolutions (7x7 with 4096 channels and 1x1 with 4096 channels), as in
  FCN (Long et al., 2015). ImageNet fc weights are reshaped into the convolutions.
- :func:`mit_b5`: the MiT-B5 (SegFormer) encoder of segmentation-models-pytorch.
- :class:`SmallEncoder`: a compact U-Net encoder (default 3 levels, GroupNorm) for the CPU benchmark.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNetBackbone", "SmallEncoder", "VGG16Backbone", "mit_b5", "mit_out_channels", "norm_layer"]


class ResNetBackbone(nn.Module):
    """ResNet-101 trunk (no avgpool / fc) with output stride 8.

    ``layer3`` uses dilation 2 and ``layer4`` dilation 4 instead of striding
    (torchvision's ``replace_stride_with_dilation=[False, True, True]``).
    Returns ``[c1, c2, c3, c4]`` (strides 4, 8, 8, 8; channels 256, 512, 1024, 2048).
    """

    out_channels = (256, 512, 1024, 2048)

    def __init__(self, depth: int = 101, output_stride: int = 8) -> None:
        super().__init__()
        import torchvision.models as tvm

        ctor = {50: tvm.resnet50, 101: tvm.resnet101}[depth]
        dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]
        net = ctor(weights=None, replace_stride_with_dilation=dilate)
        # Keep torchvision's attribute names so its state dicts load as they are.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.output_stride = output_stride

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(z))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]

    @staticmethod
    def remap_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the ImageNet classifier (``fc.*``) of a torchvision state dict."""
        return {k: v for k, v in sd.items() if not k.startswith("fc.")}


class VGG16Backbone(nn.Module):
    """VGG16 ``features`` + fc6/fc7 as convolutions (FCN).

    Returns ``[pool3, pool4, fc7]`` at strides 8, 16, 32 with 256, 512, 4096 channels.
    fc6 is a 7x7 convolution with padding 3 (so that any input size >= 32 works
    without FCN's original 100-pixel padding and cropping); both fc layers are
    followed by ReLU and Dropout(0.5) as in the original.
    """

    out_channels = (256, 512, 4096)
    # Indices in torchvision's vgg16().features after which pool3/pool4/pool5 are reached.
    _POOL3, _POOL4 = 17, 24

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        import torchvision.models as tvm

        self.features = tvm.vgg16(weights=None).features
        self.fc6 = nn.Conv2d(512, 4096, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(4096, 4096, kernel_size=1)
        self.drop6 = nn.Dropout2d(dropout)
        self.drop7 = nn.Dropout2d(dropout)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        pool3 = self.features[: self._POOL3](z)
        pool4 = self.features[self._POOL3 : self._POOL4](pool3)
        pool5 = self.features[self._POOL4 :](pool4)
        x = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        fc7 = self.drop7(F.relu(self.fc7(x), inplace=True))
        return [pool3, pool4, fc7]

    @staticmethod
    def remap_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn torchvision's ``classifier.0/3`` (fc6/fc7 as Linear) into conv weights.

        ``classifier.6`` (the 1000-way ImageNet layer) is dropped.
        """
        out = {}
        for k, v in sd.items():
            if k == "classifier.0.weight" and v.dim() == 2:
                out["fc6.weight"] = v.reshape(4096, 512, 7, 7)
            elif k == "classifier.0.bias":
                out["fc6.bias"] = v
            elif k == "classifier.3.weight" and v.dim() == 2:
                out["fc7.weight"] = v.reshape(4096, 4096, 1, 1)
            elif k == "classifier.3.bias":
                out["fc7.bias"] = v
            elif k.startswith("classifier."):
                continue
            else:
                out[k] = v
        return out


@contextlib.contextmanager
def _fast_trunc_normal(module):
    """Replace ``module.trunc_normal_`` by a plain normal draw while building.

    SegFormer initialises Linear weights with ``trunc_normal_(std=0.02)`` whose
    bounds are the *absolute* values [-2, 2], i.e. 100 standard deviations: the
    truncation never acts, but timm's inverse-erf sampler is slow on CPU (about
    20 s for MiT-B5 on 2 cores). A normal draw has the same distribution; when
    the bounds are within 6 std the original is used.
    """
    original = module.trunc_normal_

    def fast(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
        if (b - mean) < 6 * std or (mean - a) < 6 * std:
            return original(tensor, mean=mean, std=std, a=a, b=b)
        with torch.no_grad():
            return tensor.normal_(mean, std)

    module.trunc_normal_ = fast
    try:
        yield
    finally:
        module.trunc_normal_ = original


def mit_b5(drop_path_rate: float = 0.1) -> nn.Module:
    """MiT-B5 encoder from segmentation-models-pytorch (random init).

    Hierarchical Mix Transformer of SegFormer (depths 3/6/40/3, widths 64/128/320/512,
    stochastic depth 0.1 as in SegFormer and DAFormer). ``forward`` returns
    ``[x, empty, f1, f2, f3, f4]`` (smp convention); use the last four.
    """
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import mix_transformer

    with _fast_trunc_normal(mix_transformer):
        enc = smp.encoders.get_encoder("mit_b5", in_channels=3, depth=5, weights=None)
    if drop_path_rate != 0.1:
        enc.reset_drop_path(drop_path_rate)
    return enc


def mit_out_channels(encoder: nn.Module) -> tuple[int, ...]:
    return tuple(encoder.out_channels[-4:])


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``"bn"`` -> BatchNorm2d, ``"gn"`` -> GroupNorm with up to 8 groups."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = 8 if channels % 8 == 0 else 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


def conv_norm_act(cin: int, cout: int, norm: str, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        norm_layer(norm, cout),
        nn.ReLU(inplace=True),
    )


class SmallEncoder(nn.Module):
    """Compact U-Net encoder: one level per width, at strides 1, 2, 4, ... (two 3x3 convs each);
    ``stem_stride=2`` starts at stride 2 (strides 2, 4, 8: about 4x fewer operations, logits
    upsampled to the input by the segmenter).

    Every level after the first starts with a stride-2 conv; the deepest level's second conv
    is dilated (dilation 2) to widen the receptive field cheaply. Returns one feature map per
    level, shallow to deep.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), norm: str = "gn", stem_stride: int = 1) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"small segmenter widths={tuple(widths)}: expected at least 2 levels")
        if stem_stride not in (1, 2):
            raise ValueError(f"small segmenter stem_stride={stem_stride}: expected 1 or 2")
        self.out_channels = tuple(widths)
        levels, cin = [], 3
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            levels.append(nn.Sequential(conv_norm_act(cin, w, norm, stride=stem_stride if i == 0 else 2),
                                        conv_norm_act(w, w, norm, dilation=2 if last else 1)))
            cin = w
        self.levels = nn.ModuleList(levels)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            z = level(z)
            feats.append(z)
        return feats
