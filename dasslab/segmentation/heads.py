"""Decoders / classifiers. Each head maps the backbone's feature list to logits
at some stride; :class:`~dasslab.segmentation.model.Segmenter` upsamples them to
the input size.

- :class:`DeepLabV2ASPP` (Chen et al., DeepLab-V2, TPAMI 2017): four parallel 3x3
  convolutions with dilations 6/12/18/24 on the last ResNet stage, each giving
  class scores, **summed** (V2 style; DeepLab-V3 concatenates features instead).
  Weights ~ N(0, 0.01), bias 0, as in the original Caffe model.
- :class:`FCN8sHead` (Long et al., CVPR 2015): 1x1 score layers on fc7, pool4 and
  pool3; fc7 scores are upsampled 2x and added to the pool4 scores, the sum is
  upsampled 2x and added to the pool3 scores, giving stride-8 logits. The 2x
  upsamplings are learnable transposed convolutions initialised to bilinear
  interpolation; the final 8x is fixed bilinear interpolation (done by the
  Segmenter; the released FCN code keeps that layer fixed too). The skip score
  layers start at zero, so at initialisation FCN-8s equals FCN-32s.
- :class:`DAFormerHead` (Hoyer et al., CVPR 2022, Sec. 3.3 and its released
  config): each of the four MiT levels is embedded by a linear 1x1 conv to 256
  channels (no norm, no activation), upsampled to the 1/4 level, and
  concatenated (1024 ch). Context-aware fusion: an ASPP-like block on the
  concatenation with a 1x1 branch (dilation 1) and three depthwise-separable
  3x3 branches with dilations 6/12/18 (depthwise conv-BN-ReLU, pointwise
  conv-BN-ReLU), each to 256 ch, no image pooling; the four outputs are
  concatenated and fused by a 3x3 conv-BN-ReLU to 256 ch; Dropout(0.1) and a
  1x1 classifier.
- :class:`SmallDecoder`: U-Net decoder for :class:`~.backbones.SmallEncoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import conv_norm_act

__all__ = ["DAFormerHead", "DeepLabV2ASPP", "FCN8sHead", "SmallDecoder", "bilinear_kernel"]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DeepLabV2ASPP(nn.Module):
    """Sum of dilated 3x3 class-score convolutions on the deepest feature map."""

    def __init__(self, in_channels: int, num_classes: int, dilations: tuple[int, ...] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        out = self.branches[0](x)
        for conv in self.branches[1:]:
            out = out + conv(x)
        return out


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Per-channel bilinear upsampling kernel for a ConvTranspose2d (C, C, k, k)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


def _pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Match x's spatial size to ref's by replicate-padding / cropping at bottom-right.

    After floor-mode pooling, a 2x-upsampled coarse map is 0 or 1 pixel smaller
    than the finer skip map, so this never resamples.
    """
    dh = ref.shape[-2] - x.shape[-2]
    dw = ref.shape[-1] - x.shape[-1]
    if dh == 0 and dw == 0:
        return x
    if dh < 0 or dw < 0:
        x = x[..., : ref.shape[-2], : ref.shape[-1]]
        dh, dw = max(dh, 0), max(dw, 0)
    if dh or dw:
        x = F.pad(x, (0, dw, 0, dh), mode="replicate")
    return x


class FCN8sHead(nn.Module):
    """FCN-8s score/fuse layers on ``[pool3, pool4, fc7]``; returns stride-8 logits."""

    def __init__(self, in_channels: tuple[int, int, int], num_classes: int):
        super().__init__()
        c3, c4, c7 = in_channels
        self.score_fr = nn.Conv2d(c7, num_classes, 1)
        self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        nn.init.normal_(self.score_fr.weight, std=0.01)
        nn.init.zeros_(self.score_fr.bias)
        for conv in (self.score_pool4, self.score_pool3):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        with torch.no_grad():
            for up in (self.upscore2, self.upscore_pool4):
                up.weight.copy_(bilinear_kernel(num_classes, 4))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        pool3, pool4, fc7 = feats
        s = self.upscore2(self.score_fr(fc7))
        s4 = self.score_pool4(pool4)
        s = _pad_to(s, s4) + s4
        s = self.upscore_pool4(s)
        s3 = self.score_pool3(pool3)
        return _pad_to(s, s3) + s3


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, dilation: int = 1, groups: int = 1):
        pad = dilation * (k - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class _SepConvBNReLU(nn.Sequential):
    """Depthwise (3x3, dilated) conv-BN-ReLU followed by pointwise conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__(_ConvBNReLU(cin, cin, 3, dilation, groups=cin), _ConvBNReLU(cin, cout, 1))


class DAFormerHead(nn.Module):
    """DAFormer decoder with context-aware feature fusion (see module docstring)."""

    def __init__(
        self,
        in_channels: tuple[int, ...],
        num_classes: int,
        embed_dim: int = 256,
        dilations: tuple[int, ...] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        fused = embed_dim * len(in_channels)
        self.aspp = nn.ModuleList(
            _ConvBNReLU(fused, embed_dim, 1) if d == 1 else _SepConvBNReLU(fused, embed_dim, d) for d in dilations
        )
        self.bottleneck = _ConvBNReLU(embed_dim * len(dilations), embed_dim, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)
        self._n_levels = len(in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = feats[-self._n_levels :]
        size = feats[0].shape[-2:]
        x = torch.cat([_resize(emb(f), size) for emb, f in zip(self.embed, feats)], dim=1)
        x = torch.cat([branch(x) for branch in self.aspp], dim=1)
        x = self.bottleneck(x)
        return self.classifier(self.dropout(x))


class SmallDecoder(nn.Module):
    """U-Net decoder: at each finer level, bilinearly upsample, concatenate the
    skip features and apply two 3x3 conv-norm-ReLU; 1x1 classifier at stride 1."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, norm: str = "gn"):
        super().__init__()
        blocks = []
        for deep, skip in zip(widths[:0:-1], widths[-2::-1]):
            blocks.append(nn.Sequential(conv_norm_act(deep + skip, skip, norm), conv_norm_act(skip, skip, norm)))
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, feats[-2::-1]):
            x = block(torch.cat([_resize(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(x)
