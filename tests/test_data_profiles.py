"""Long-tail profiles: shared invariants over every registered profile, then each one's recipe."""
from __future__ import annotations

import pytest

from git_ray.registry import PROFILES

NAMES = PROFILES.names()


def build(name: str, **kw) -> list[int]:
    args = dict(num_classes=10, imbalance_ratio=10.0, zipf_alpha=None, max_per_class=1000, min_per_class=1)
    args.update(kw)
    return PROFILES.build(name, **args)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [1, 2, 7, 10, 49])
def test_largest_first_integers_and_length(name, num_classes):
    sizes = build(name, num_classes=num_classes, imbalance_ratio=50.0)
    assert len(sizes) == num_classes
    assert all(isinstance(s, int) for s in sizes)
    assert sizes[0] == 1000  # the largest class is max_per_class
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))


@pytest.mark.parametrize("name", NAMES)
def test_ratio_never_exceeds_imbalance_ratio(name):
    sizes = build(name, imbalance_ratio=10.0)
    assert sizes[0] / sizes[-1] <= 10.0 * (1 + 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_floor_respected(name):
    sizes = build(name, imbalance_ratio=1000.0, max_per_class=500, min_per_class=7)
    assert min(sizes) >= 7
    # a floor above the whole profile lifts every class to it
    assert build(name, max_per_class=3, min_per_class=5) == [5] * 10


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_raise(name):
    with pytest.raises(ValueError):
        build(name, num_classes=0)
    with pytest.raises(ValueError):
        build(name, imbalance_ratio=0.5)


@pytest.mark.parametrize("name", ["zipf", "exp", "step"])
@pytest.mark.parametrize("ratio", [10.0, 100.0])
def test_ratio_equals_imbalance_ratio_within_rounding(name, ratio):
    sizes = build(name, imbalance_ratio=ratio, max_per_class=5000)
    # the smallest class is rounded or truncated to an integer: the ratio is exact up to one image
    assert sizes[-1] == round(5000 / ratio)
    assert sizes[0] / (sizes[-1] + 1) <= ratio <= sizes[0] / (sizes[-1] - 1)


def test_none_is_flat():
    assert build("none", imbalance_ratio=100.0) == [1000] * 10


def test_zipf_k49_lt_recipe():
    # K49-LT: Zipf alpha 2, largest class 4,800, every class at least 5, 49 classes.
    sizes = PROFILES.build("zipf", num_classes=49, imbalance_ratio=100.0, zipf_alpha=2.0,
                           max_per_class=4800, min_per_class=5)
    assert sizes[:8] == [4800, 1200, 533, 300, 192, 133, 98, 75]
    assert sizes == [max(5, round(4800 / (c + 1) ** 2)) for c in range(49)]
    assert sizes[29:] == [5] * 20  # 4800 / 30^2 = 5.3 is the last class above the floor
    assert sum(sizes) == 7832


def test_zipf_alpha_from_ratio():
    sizes = build("zipf", num_classes=10, imbalance_ratio=100.0, max_per_class=1000)
    # alpha = ln 100 / ln 10 = 2: the second class gets a quarter of the first
    assert sizes[:3] == [1000, 250, 111] and sizes[-1] == 10


def test_exp_cifar10_lt_recipe():
    # CIFAR-10-LT / CIFAR-100-LT at ratio 100 as LDAM builds them: int(n_max * 0.01 ** (i / (C - 1)))
    sizes = build("exp", num_classes=10, imbalance_ratio=100.0, max_per_class=5000)
    assert sizes == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(sizes) == 12406
    assert sum(build("exp", num_classes=100, imbalance_ratio=100.0, max_per_class=500)) == 10847
    assert sum(build("exp", num_classes=10, imbalance_ratio=10.0, max_per_class=5000)) == 20431


def test_step_halves():
    assert build("step", num_classes=10, imbalance_ratio=100.0, max_per_class=500) == [500] * 5 + [5] * 5
    assert build("step", num_classes=7, imbalance_ratio=10.0, max_per_class=100) == [100] * 3 + [10] * 4
