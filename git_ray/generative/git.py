"""GIT augmentation: replace part of each training batch by generator samples.

From the start epoch on, a batch keeps its first round(B * (1 - gen_frac)) images; the rest are
replaced by new images: a source drawn class-balanced from the training set, its content encoded,
decoded with a style from N(0, I) * style_scale, labelled with the source's class. With
`git_threshold`, only sources from classes smaller than the threshold are translated, each with
probability (threshold - n_c) / (threshold - n_min); the others enter the batch as they are.
Images go in and out in [0, 1]; the training loop normalises afterwards.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from git_ray.generative.networks import Munit
from git_ray.generative.train import BalancedSampler


def translate_probability(class_counts: Tensor, threshold: int | None) -> Tensor:
    """(C,) probability that a source of each class is translated: 1 without a threshold; else
    (threshold - n_c) / (threshold - n_min) below the threshold and 0 at or above it."""
    counts = class_counts.float()
    if threshold is None:
        return torch.ones_like(counts)
    present = counts[counts > 0]
    n_min = present.min() if len(present) else counts.new_tensor(0.0)
    if n_min >= threshold:  # no class is small enough
        return torch.zeros_like(counts)
    return ((threshold - counts) / (threshold - n_min)).clamp(0, 1) * (counts < threshold)


class GitAugmenter:
    """Callable `(x (B, C, H, W) in [0, 1], y (B,), epoch) -> (x', y')` for the training loop."""

    def __init__(self, munit: Munit, data: Any, augment_cfg: Any, *, s1: int, seed: int,
                 device: torch.device | str):
        self.device = torch.device(device)
        self.munit = munit.to(self.device).eval()
        self.x_source = data.x_train.to(self.device)  # (N, C, H, W) in [0, 1]
        self.y_cpu = data.y_train.cpu()  # labels looked up on the CPU: no device sync per batch
        self.gen_frac = augment_cfg.gen_frac
        self.style_scale = augment_cfg.style_scale
        self.start_epoch = s1 if augment_cfg.git_start == "s1" else 0
        # All draws (sources, styles, threshold coins) from one CPU generator: the same on any device.
        self.rng = torch.Generator().manual_seed(seed)
        self.sampler = BalancedSampler(data.y_train, self.rng)
        self.p_translate = translate_probability(data.class_counts.cpu(), augment_cfg.git_threshold)
        self.thresholded = augment_cfg.git_threshold is not None

    def active(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and self.gen_frac > 0

    @torch.no_grad()
    def generate(self, n: int) -> tuple[Tensor, Tensor]:
        """n new (image in [0, 1], label) pairs: class-balanced sources in random styles."""
        idx = self.sampler(n)  # (n,) CPU
        z = torch.randn(n, self.munit.style_dim, generator=self.rng) * self.style_scale  # (n, S)
        src_y = self.y_cpu[idx]  # (n,) CPU
        src = self.x_source[idx.to(self.device)]  # (n, C, H, W) in [0, 1]
        out = (self.munit.translate(src * 2 - 1, z.to(self.device)) + 1) / 2
        out = out.clamp(0, 1).to(src.dtype)
        if self.thresholded:  # a coin per source: translated with its class's probability
            coin = torch.rand(n, generator=self.rng)
            keep_translated = (coin < self.p_translate[src_y]).to(self.device)
            out = torch.where(keep_translated[:, None, None, None], out, src)
        return out, src_y

    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        if not self.active(epoch):
            return x, y
        keep = round(len(x) * (1 - self.gen_frac))
        n_gen = len(x) - keep
        if n_gen == 0:
            return x, y
        gx, gy = self.generate(n_gen)
        return (torch.cat([x[:keep], gx.to(x.device, x.dtype)]),
                torch.cat([y[:keep], gy.to(y.device, y.dtype)]))
