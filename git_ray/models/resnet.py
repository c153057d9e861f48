"""CIFAR-style ResNets of He et al. (2016): resnet20 and resnet32.

Three stages of basic blocks with width, 2*width and 4*width channels (16/32/64 by default),
n = (depth - 2) / 6 blocks per stage, stride 2 at the start of stages two and three. Shortcuts
are parameter-free ("option A"): subsample spatially and zero-pad the new channels, so
resnet20 has about 0.27M parameters at width 16. Global average pooling makes the networks work
for any input size (16, 28, 32, ...) and channel count.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from git_ray.models.base import Classifier
from git_ray.registry import ARCHS


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # BN follows: no bias


class ZeroPadShortcut(nn.Module):
    """Identity shortcut across a stride/width change: subsample, then pad channels with zeros."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_lo = (cout - cin) // 2
        self.pad_hi = cout - cin - self.pad_lo

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, ceil(H/s), ceil(W/s))
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            ZeroPadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def resnet_body(depth: int, in_channels: int, width: int) -> tuple[nn.Sequential, int]:
    """The convolutional trunk of a CIFAR ResNet of `depth` layers and its output width."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [_conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(BasicBlock(cin, cout, stride))
            cin = cout
    return nn.Sequential(*layers), cin


def _build(depth: int, in_channels: int, num_classes: int, width: int, head: str) -> Classifier:
    body, dim = resnet_body(depth, in_channels, width)
    return Classifier(body, dim, num_classes, head)


@ARCHS.register("resnet20")
def resnet20(*, in_channels: int, num_classes: int, width: int = 16, head: str = "linear",
             image_size: int | None = None) -> Classifier:
    """ResNet-20 (3 blocks per stage), the paper's K49 network. `image_size` is not needed."""
    return _build(20, in_channels, num_classes, width, head)


@ARCHS.register("resnet32")
def resnet32(*, in_channels: int, num_classes: int, width: int = 16, head: str = "linear",
             image_size: int | None = None) -> Classifier:
    """ResNet-32 (5 blocks per stage), the paper's CIFAR network. `image_size` is not needed."""
    return _build(32, in_channels, num_classes, width, head)
