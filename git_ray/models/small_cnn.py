"""A two-convolution network for the embedded 16x16 digits: fast on CPU, enough to learn them.

conv3x3(C, 2w) - BN - ReLU - maxpool 2 - conv3x3(2w, 4w) - BN - ReLU - maxpool 2 - flatten.
The features keep the 4x4 spatial layout: on 16x16 digits a global average pool after two
convolutions throws away where the strokes are and halves test accuracy.
"""
from __future__ import annotations

from torch import nn

from git_ray.models.base import Classifier
from git_ray.registry import ARCHS


@ARCHS.register("small_cnn")
def small_cnn(*, in_channels: int, num_classes: int, width: int = 16, head: str = "linear",
              image_size: int | None = None) -> Classifier:
    """The small CNN; `image_size` (default 16) sets the flattened feature width."""
    c1, c2 = 2 * width, 4 * width
    side = max(1, (image_size or 16) // 4)
    body = nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
        nn.AdaptiveMaxPool2d(side),  # (B, c2, H/4, W/4)
        nn.Flatten(),  # (B, c2 * side * side)
    )
    return Classifier(body, c2 * side * side, num_classes, head)
