"""Segmentation models: DeepLab-V2 (ResNet-101), FCN-8s (VGG16), DAFormer (MiT-B5), and a small CPU model.

>>> from dasslab.segmentation import build_segmenter
>>> seg = build_segmenter("small", num_classes=11)
>>> logits = seg(images_in_minus1_1)        # N x 11 x H x W
"""

from .model import IMAGENET_MEAN, IMAGENET_STD, SEGMENTER_NAMES, Segmenter, build_segmenter
from .weights import LoadReport, WeightsError, fetch_imagenet_weights, load_weights, read_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SEGMENTER_NAMES",
    "LoadReport",
    "Segmenter",
    "WeightsError",
    "build_segmenter",
    "fetch_imagenet_weights",
    "load_weights",
    "read_state_dict",
]
