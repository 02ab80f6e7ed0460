"""The segmenter: backbone + head + input normalisation, and its builder.

Conventions
-----------
- Images enter :meth:`Segmenter.forward` in [-1, 1] (the project's image
  convention, shared with the diffusion model). :meth:`Segmenter.normalize` maps
  them to ImageNet-normalised RGB, ``z = ((x + 1) / 2 - mean) / std``, the space
  the backbones were pretrained in. Guidance masks are applied in this space
  (``forward_normalized``), see docs/method.md §2.
- Logits are returned at the input resolution (bilinear, ``align_corners=False``).
- :meth:`Segmenter.param_groups` follows the DeepLab convention: backbone at the
  base learning rate (``lr_mult`` 1), the freshly initialised head at 10x
  (``lr_mult`` 10; for ``small``, which has no pretrained backbone, 1 by default).
  Optimiser builders multiply the base lr by ``lr_mult``. Every parameter is in
  exactly one group; frozen ones (``requires_grad=False``) are included and
  skipped by torch optimisers.
- ``freeze_bn``: BatchNorm layers of the *backbone* stay in eval mode (running
  statistics fixed) and their affine parameters get ``requires_grad=False``.
  Defaults: ``deeplabv2_r101`` True (the usual DeepLab-V2 practice at batch 2),
  ``daformer_mitb5`` False (MiT uses LayerNorm; the decoder's BN is trained, as
  in DAFormer), ``fcn8s_vgg16`` False (VGG16 has no BN), ``small`` False.

Parameter counts with 19 classes: deeplabv2_r101 43.9 M, fcn8s_vgg16 134.4 M,
daformer_mitb5 85.2 M, small 0.47 M (see ``tests/test_segmentation.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import weights as W
from .backbones import ResNetBackbone, SmallEncoder, VGG16Backbone, mit_b5, mit_out_channels
from .heads import DAFormerHead, DeepLabV2ASPP, FCN8sHead, SmallDecoder

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SEGMENTER_NAMES", "Segmenter", "build_segmenter"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Segmenter(nn.Module):
    """``logits = head(backbone(normalize(x)))`` upsampled to the input size."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        head: nn.Module,
        num_classes: int,
        freeze_bn: bool = False,
        head_lr_mult: float = 10.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.num_classes = int(num_classes)
        self.backbone = backbone
        self.head = head
        self.head_lr_mult = float(head_lr_mult)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze_bn = False
        self.set_freeze_bn(freeze_bn)

    # ------------------------------------------------------------------ input space
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> ImageNet-normalised network input."""
        return ((x + 1.0) * 0.5 - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        return (z * self.std + self.mean) * 2.0 - 1.0

    # ------------------------------------------------------------------ forward
    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) for an already normalised input (N, 3, H, W)."""
        logits = self.head(self.backbone(z))
        if logits.shape[-2:] != z.shape[-2:]:
            logits = F.interpolate(logits, size=z.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) for images in [-1, 1]."""
        return self.forward_normalized(self.normalize(x))

    # ------------------------------------------------------------------ training helpers
    def param_groups(self) -> list[dict]:
        """``[{"params": backbone, "lr_mult": 1.0}, {"params": head, "lr_mult": head_lr_mult}]``."""
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": 1.0},
            {"params": list(self.head.parameters()), "lr_mult": self.head_lr_mult},
        ]

    def set_freeze_bn(self, freeze: bool) -> None:
        """Freeze (or unfreeze) the backbone's BatchNorm statistics and affine parameters."""
        self.freeze_bn = bool(freeze)
        for m in self._backbone_bns():
            for p in m.parameters():
                p.requires_grad_(not self.freeze_bn)
        self.train(self.training)

    def _backbone_bns(self):
        return [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.freeze_bn:
            for m in self._backbone_bns():
                m.eval()
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, freeze_bn={self.freeze_bn}"


# ---------------------------------------------------------------------- builders


def _or(value, default):
    """Config files may pass ``null`` for "the model's default"."""
    return default if value is None else value


def _deeplabv2_r101(num_classes: int, freeze_bn: bool | None = None, head_lr_mult: float | None = None) -> Segmenter:
    freeze_bn, head_lr_mult = _or(freeze_bn, True), _or(head_lr_mult, 10.0)
    backbone = ResNetBackbone(depth=101, output_stride=8)
    head = DeepLabV2ASPP(backbone.out_channels[-1], num_classes, dilations=(6, 12, 18, 24))
    return Segmenter("deeplabv2_r101", backbone, head, num_classes, freeze_bn, head_lr_mult)


def _fcn8s_vgg16(
    num_classes: int, freeze_bn: bool | None = None, head_lr_mult: float | None = None, dropout: float = 0.5
) -> Segmenter:
    freeze_bn, head_lr_mult = _or(freeze_bn, False), _or(head_lr_mult, 10.0)
    backbone = VGG16Backbone(dropout=dropout)
    head = FCN8sHead(backbone.out_channels, num_classes)
    return Segmenter("fcn8s_vgg16", backbone, head, num_classes, freeze_bn, head_lr_mult)


def _daformer_mitb5(
    num_classes: int,
    freeze_bn: bool | None = None,
    head_lr_mult: float | None = None,
    embed_dim: int = 256,
    drop_path_rate: float = 0.1,
) -> Segmenter:
    freeze_bn, head_lr_mult = _or(freeze_bn, False), _or(head_lr_mult, 10.0)
    backbone = mit_b5(drop_path_rate=drop_path_rate)
    head = DAFormerHead(mit_out_channels(backbone), num_classes, embed_dim=embed_dim)
    return Segmenter("daformer_mitb5", backbone, head, num_classes, freeze_bn, head_lr_mult)


def _small(
    num_classes: int,
    freeze_bn: bool | None = None,
    head_lr_mult: float | None = None,
    widths: tuple[int, ...] = (32, 64, 128),
    norm: str = "gn",
    stem_stride: int = 1,
) -> Segmenter:
    """3-level U-Net (widths 32/64/128) with GroupNorm: trained from scratch at batch sizes where
    BatchNorm's batch statistics would differ between clean, noisy and masked inputs (App. C)."""
    freeze_bn, head_lr_mult = _or(freeze_bn, False), _or(head_lr_mult, 1.0)
    widths = tuple(int(w) for w in widths)
    backbone = SmallEncoder(widths, norm=norm, stem_stride=int(stem_stride))
    head = SmallDecoder(widths, num_classes, norm=norm)
    return Segmenter("small", backbone, head, num_classes, freeze_bn, head_lr_mult)


_BUILDERS: dict[str, Callable[..., Segmenter]] = {
    "deeplabv2_r101": _deeplabv2_r101,
    "fcn8s_vgg16": _fcn8s_vgg16,
    "daformer_mitb5": _daformer_mitb5,
    "small": _small,
}
SEGMENTER_NAMES = tuple(_BUILDERS)


def build_segmenter(
    name: str, num_classes: int, pretrained: bool = False, weights: str | None = None, **kwargs
) -> Segmenter:
    """Build a segmenter by name.

    Args:
        name: one of ``deeplabv2_r101``, ``fcn8s_vgg16``, ``daformer_mitb5``, ``small``.
        num_classes: number of output classes K.
        pretrained: load the library's ImageNet weights into the backbone
            (see :mod:`dasslab.segmentation.weights`). Ignored when ``weights`` is given.
        weights: path of a local state dict / checkpoint (full Segmenter or encoder only).
        **kwargs: per-model options: ``freeze_bn``, ``head_lr_mult`` (all; ``None`` = the
            model's default);
            ``dropout`` (fcn8s_vgg16); ``embed_dim``, ``drop_path_rate`` (daformer_mitb5);
            ``widths`` (one per level, default (32, 64, 128)), ``norm`` ("gn" default | "bn") (small).

    Raises:
        ValueError: unknown name or bad num_classes.
        WeightsError: weights cannot be obtained or do not fit.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown segmenter {name!r}; valid names: {', '.join(SEGMENTER_NAMES)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    imagenet_path = None
    if weights is not None and str(weights) != "":
        state = W.read_state_dict(weights)  # fails early on a missing/unreadable file
    else:
        weights, state = None, None
        if pretrained:
            imagenet_path = W.fetch_imagenet_weights(name)  # before building: fail fast
    model = _BUILDERS[name](int(num_classes), **kwargs)
    if state is not None:
        W.load_weights(model, weights, state=state)
    elif imagenet_path is not None:
        W.load_imagenet(model, name, imagenet_path)
    return model
