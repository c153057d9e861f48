"""Long-tail profiles: how many training images each class gets, in rank order (largest first).

Every profile is registered in `PROFILES` and called with the same keyword arguments:

    PROFILES.build("zipf", num_classes=49, imbalance_ratio=100.0, zipf_alpha=2.0,
                   max_per_class=4800, min_per_class=5) -> [4800, 1200, 533, ..., 5]

Sizes are rounded to integers and floored at `min_per_class`, so a floor above what the profile
asks for flattens the tail (K49-LT: Zipf alpha 2 would give 2 images to the last class, the
floor of 5 lifts it). Which class gets which rank is decided elsewhere (the per-instance class
order in `git_ray.data.dataset`).
"""
from __future__ import annotations

import math

from git_ray.registry import PROFILES


def _finish(sizes: list[float], min_per_class: int, truncate: bool = False) -> list[int]:
    # Zipf rounds to the nearest integer; exp and step truncate, as LDAM's CIFAR-LT code does,
    # so CIFAR-10-LT / CIFAR-100-LT get their standard 12,406 / 10,847 images. The 1e-6 keeps
    # a float product like 49.99999999 from truncating to 49.
    ints = [math.floor(s + 1e-6) if truncate else int(round(s)) for s in sizes]
    return [max(int(min_per_class), n, 1) for n in ints]


def _check(num_classes: int, imbalance_ratio: float, max_per_class: int) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if imbalance_ratio < 1.0:
        raise ValueError(f"imbalance_ratio must be at least 1, got {imbalance_ratio}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}")


@PROFILES.register("zipf")
def zipf_profile(*, num_classes: int, imbalance_ratio: float = 100.0, zipf_alpha: float | None = None,
                 max_per_class: int, min_per_class: int = 1) -> list[int]:
    """Zipf (power law): the class at rank c (0-based) gets max_per_class * (c + 1) ** -alpha.

    alpha is `zipf_alpha` when given (K49-LT: 2.0; `imbalance_ratio` is then ignored), else the
    exponent that makes largest / smallest equal `imbalance_ratio`: alpha = ln(ratio) / ln(C).
    """
    _check(num_classes, imbalance_ratio, max_per_class)
    if zipf_alpha is None:
        zipf_alpha = math.log(imbalance_ratio) / math.log(num_classes) if num_classes > 1 else 0.0
    return _finish([max_per_class * (c + 1) ** -zipf_alpha for c in range(num_classes)], min_per_class)


@PROFILES.register("exp")
def exp_profile(*, num_classes: int, imbalance_ratio: float = 100.0, zipf_alpha: float | None = None,
                max_per_class: int, min_per_class: int = 1) -> list[int]:
    """Exponential (CIFAR-LT): n_i = max_per_class * r ** (i / (C - 1)) with r = 1 / imbalance_ratio,
    truncated to an integer (CIFAR-10-LT at ratio 100: 5000, 2997, 1796, ..., 50)."""
    _check(num_classes, imbalance_ratio, max_per_class)
    r, denom = 1.0 / imbalance_ratio, max(num_classes - 1, 1)
    return _finish([max_per_class * r ** (i / denom) for i in range(num_classes)], min_per_class,
                   truncate=True)


@PROFILES.register("step")
def step_profile(*, num_classes: int, imbalance_ratio: float = 100.0, zipf_alpha: float | None = None,
                 max_per_class: int, min_per_class: int = 1) -> list[int]:
    """Step: the first C // 2 classes get max_per_class, the rest max_per_class / imbalance_ratio
    (truncated to an integer).

    With an odd C the smaller half has one class more. A single class is all "many".
    """
    _check(num_classes, imbalance_ratio, max_per_class)
    n_many = max(num_classes // 2, 1)
    sizes = [float(max_per_class)] * n_many + [max_per_class / imbalance_ratio] * (num_classes - n_many)
    return _finish(sizes, min_per_class, truncate=True)


@PROFILES.register("none")
def flat_profile(*, num_classes: int, imbalance_ratio: float = 100.0, zipf_alpha: float | None = None,
                 max_per_class: int, min_per_class: int = 1) -> list[int]:
    """Balanced: every class gets max_per_class (`imbalance_ratio` is ignored)."""
    _check(num_classes, imbalance_ratio, max_per_class)
    return _finish([float(max_per_class)] * num_classes, min_per_class)
