"""Nuisance transforms: class-agnostic random changes of an image (rotation, background, stroke).

Each nuisance is registered in `NUISANCES` and built with a `strength` in [0, 1] that scales its
distribution (0: the identity, 1: the range of METHOD.md). The result is a callable

    nuisance(x, generator) -> x'        # x: (B, C, H, W) float in [0, 1], on any device

that transforms a whole batch at once on x's device (no per-image Python loop) and draws one
independent set of random parameters per image from `generator`. The generator may live on a
different device than x (a CPU generator with a CUDA batch): parameters are drawn on the
generator's device and then moved, so the same seed gives the same draws on every device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray.registry import NUISANCES

BACKGROUND_EPS = 1e-6  # a pixel at or below this (in every channel) counts as background
BACKGROUND_MAX = 99  # largest background intensity of K49-BG-LT, out of 255


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """n uniform [0, 1) numbers drawn on the generator's device, returned on `device`."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)  # (n,)


def _randint(low: int, high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """n integers uniform in [low, high) drawn on the generator's device, returned on `device`."""
    return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(device)


class Nuisance:
    """A batched random transform with a strength in [0, 1]; subclasses implement `_apply`."""

    name = "?"

    def __init__(self, strength: float = 1.0):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"nuisance strength must lie in [0, 1], got {strength}")
        self.strength = float(strength)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"a nuisance takes a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return x.clone()
        return self._apply(x, generator)

    def _apply(self, x: Tensor, generator: torch.Generator) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.strength})"


class Identity(Nuisance):
    """No nuisance: returns a copy of the batch (strength has no effect)."""

    name = "none"

    def _apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x.clone()


class Rotation(Nuisance):
    """K49-ROT-LT: rotation about the image centre by an angle uniform in [-180 s, 180 s] degrees.

    Strength s scales the angle range (s = 1: any angle; s = 0: the identity). Bicubic
    resampling with zero fill outside the image; bicubic overshoot is clamped back to [0, 1].
    """

    name = "rotation"

    def _apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b = x.shape[0]
        u = _rand(b, generator, x.device)  # (B,) drawn even at s = 0 so streams stay aligned
        if self.strength == 0.0:
            return x.clone()
        angle = (2.0 * u - 1.0) * math.pi * self.strength  # (B,) radians
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(angle)
        # affine_grid maps output coordinates to input coordinates in [-1, 1]^2, so this matrix
        # is the inverse rotation of the image content; either sign is a rotation by a uniform angle.
        theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                             torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
        xf = x.float()
        grid = F.affine_grid(theta, list(xf.shape), align_corners=False)  # (B, H, W, 2)
        out = F.grid_sample(xf, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
        return out.clamp_(0.0, 1.0).to(x.dtype)  # (B, C, H, W)


class Background(Nuisance):
    """K49-BG-LT: every background pixel (0 in all channels) takes one intensity per image.

    The intensity is an integer drawn uniformly from 0..round(99 s), divided by 255. Strength s
    scales the largest intensity (s = 1: 0..99 as in the paper; s = 0: always 0, the identity).
    Non-background pixels are never changed.
    """

    name = "background"

    def _apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b = x.shape[0]
        top = int(round(BACKGROUND_MAX * self.strength))
        level = _randint(0, top + 1, b, generator, x.device).to(x.dtype) / 255.0  # (B,)
        is_bg = (x <= BACKGROUND_EPS).all(dim=1, keepdim=True)  # (B, 1, H, W)
        fill = level.view(b, 1, 1, 1).expand_as(x)  # (B, C, H, W)
        return torch.where(is_bg, fill, x)


def _morph(x: Tensor, k: int, dilate: bool) -> Tensor:
    """Grey dilation (max) or erosion (min) with a k x k square of ones, size kept.

    Even k has no centre pixel; following OpenCV's default anchor (k // 2) the window covers
    k // 2 pixels before and k - 1 - k // 2 after. The border never wins: it is padded with
    -inf for the max, so erosion (-max(-x)) sees +inf there and does not eat in from the edge.
    """
    if k == 1:
        return x
    before, after = k // 2, k - 1 - k // 2
    sign = 1.0 if dilate else -1.0
    padded = F.pad(sign * x, (before, after, before, after), value=-math.inf)  # (B, C, H+k-1, W+k-1)
    return sign * F.max_pool2d(padded, kernel_size=k, stride=1)  # (B, C, H, W)


def _window_max(x: Tensor, low: bool) -> Tensor:
    """Max over a 2x2 window at offsets {-1, 0} (low) or {0, +1}, border -inf, size kept."""
    p = F.pad(x, (1, 0, 1, 0) if low else (0, 1, 0, 1), value=-math.inf)  # (B, C, H+1, W+1)
    rows = torch.maximum(p[:, :, 1:, :], p[:, :, :-1, :])  # (B, C, H, W+1)
    return torch.maximum(rows[:, :, :, 1:], rows[:, :, :, :-1])  # (B, C, H, W)


class Dilation(Nuisance):
    """K49-DIL-LT: stroke width. With probability 0.6 dilation by a k x k square, k uniform in
    {2, 3, 4}; otherwise erosion with k uniform in {1, 2} (k = 1 leaves the image as it is).

    Strength s is the probability that an image is transformed at all (s = 1: every image, as in
    the paper; s = 0: none, the identity); the kernel distribution itself does not change.
    """

    name = "dilation"
    P_DILATE = 0.6
    DILATE_K = (2, 3, 4)
    ERODE_K = (1, 2)

    def _apply(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b = x.shape[0]
        # Every draw is made for every image, whatever the strength, so that the same seed
        # gives the same kernels at every strength (only the "transformed?" cut-off moves).
        applied = _rand(b, generator, x.device) < self.strength  # (B,)
        dilate = _rand(b, generator, x.device) < self.P_DILATE  # (B,)
        k_dil = _randint(0, len(self.DILATE_K), b, generator, x.device)  # (B,) index into DILATE_K
        k_ero = _randint(0, len(self.ERODE_K), b, generator, x.device)  # (B,) index into ERODE_K
        # Kernel index per image: 0 = left as it is, 1..3 = dilations, 4.. = erosions.
        choice = torch.where(dilate, 1 + k_dil, 1 + len(self.DILATE_K) + k_ero)  # (B,)
        choice = torch.where(applied, choice, torch.zeros_like(choice))
        # Every square is a chain of 2x2 maxima over the whole batch (squares add under the
        # Minkowski sum, and the offsets chosen keep OpenCV's anchors): streaming elementwise
        # maxima with no gathers, about 2x faster on CPU than max-pooling each kernel's images,
        # and equal to `_morph` pixel for pixel (tested).
        d2 = _window_max(x, low=True)  # 2x2: offsets {-1, 0}
        d3 = _window_max(d2, low=False)  # 3x3 = 2x2 + {0, +1}
        d4 = _window_max(d3, low=True)  # 4x4 = 3x3 + {-1, 0}
        sel = choice.view(b, 1, 1, 1)
        out = torch.where(sel == 1, d2, x)
        out = torch.where(sel == 2, d3, out)
        out = torch.where(sel == 3, d4, out)
        # sel == 4 is erosion by a 1 x 1 square: the image as it is
        out = torch.where(sel == 5, -_window_max(-x, low=True), out)  # erosion 2x2
        return out  # (B, C, H, W)


for _cls in (Identity, Rotation, Background, Dilation):
    NUISANCES.register(_cls.name)(_cls)


def apply_nuisance(nuisance: Nuisance, x: Tensor, generator: torch.Generator,
                   chunk: int = 4096) -> Tensor:
    """`nuisance` over a large tensor in chunks of `chunk` images, to bound memory.

    Draws are made chunk after chunk from `generator`, so the result is a function of the
    generator's state and of `chunk`: keep `chunk` fixed wherever results must reproduce.
    """
    if x.shape[0] == 0:
        return x.clone()
    return torch.cat([nuisance(x[i:i + chunk], generator) for i in range(0, x.shape[0], chunk)])
