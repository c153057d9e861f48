"""A two-convolution network for the embedded 16x16 digits: fast on CPU, enough to learn them.

conv3x3(C, 2w) - BN - ReLU - maxpool 2 - conv3x3(2w, 4w) - BN - ReLU - global average pool.
"""
from __future__ import annotations

from torch import nn

from git_ray.models.base import Classifier
from git_ray.registry import ARCHS


@ARCHS.register("small_cnn")
def small_cnn(*, in_channels: int, num_classes: int, width: int = 16, head: str = "linear",
              image_size: int | None = None) -> Classifier:
    """The small CNN; global pooling makes it independent of `image_size`."""
    c1, c2 = 2 * width, 4 * width
    body = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
    )
    return Classifier(body, c2, num_classes, head)
