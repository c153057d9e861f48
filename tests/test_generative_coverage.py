"""Nuisance coverage: every nuisance has a measurer, each measurer reads its nuisance's parameter,
a copying generator scores badly and one that applies the true nuisance scores well."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from git_ray.config import DatasetConfig
from git_ray.data.nuisances import Background
from git_ray.generative import MEASURERS, nuisance_coverage, quality_check
from git_ray.generative.coverage import coverage_from_values, rotate, wasserstein_1d
from git_ray.generative.quality import MAX_COVERAGE_DISTANCE, fit_judge
from git_ray.registry import NUISANCES

MEASURABLE = [n for n in NUISANCES.names() if n != "none"]


class Copy(nn.Module):
    """A 'generator' that returns its input whatever the style: it passes label agreement."""

    style_dim = 4

    def __init__(self):
        super().__init__()
        self.content_encoder = nn.Identity()

    def decode(self, content: Tensor, style: Tensor) -> Tensor:
        return content


class TrueNuisance(nn.Module):
    """A 'generator' that finds each input's clean training source and applies the true nuisance
    to it with fresh draws: the ideal a generator could reach."""

    style_dim = 4

    def __init__(self, data, nuisance):
        super().__init__()
        self.x, self.clean, self.nuisance = data.x_train * 2 - 1, data.x_train_clean, nuisance
        self.g = torch.Generator().manual_seed(123)

    def content_encoder(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> the clean sources
        idx = torch.cdist(x.flatten(1), self.x.flatten(1)).argmin(1)
        return self.clean[idx]

    def decode(self, content: Tensor, style: Tensor) -> Tensor:
        return self.nuisance(content, self.g) * 2 - 1


def digits(nuisance: str):
    from git_ray.data import build_dataset
    return build_dataset(DatasetConfig(source="digits", nuisance=nuisance, profile="zipf", imbalance_ratio=10))


@pytest.mark.parametrize("name", NUISANCES.names())
def test_every_nuisance_has_a_measurer(name: str) -> None:
    assert name in MEASURERS.names()


def test_measurers_read_the_parameter() -> None:
    x = torch.zeros(3, 1, 16, 16)
    x[:, :, 4:12, 7:9] = 1.0  # a vertical bar
    levels = torch.tensor([0.0, 50 / 255, 99 / 255])
    shaded = torch.where(x > 0, x, levels.view(3, 1, 1, 1).expand_as(x))
    torch.testing.assert_close(MEASURERS.build("background")(shaded, x), levels)

    dil = MEASURERS.build("dilation")
    thick = x.clone()
    thick[:, :, 4:12, 6:10] = 1.0  # twice the width
    torch.testing.assert_close(dil(torch.cat([x[:1], thick[:1]]), x[:2]), torch.tensor([1.0, 2.0]))

    rot = MEASURERS.build("rotation")
    x = torch.zeros(3, 1, 16, 16)
    x[:, :, 3:13, 7:9] = 1.0
    x[:, :, 3:5, 9:12] = 1.0  # an asymmetric "7"-like shape: one angle fits
    angles = torch.tensor([-90.0, 30.0, 135.0])
    found = rot(rotate(x, angles), x)
    assert torch.allclose(found, angles, atol=5.0), found


def test_wasserstein_1d_on_known_samples() -> None:
    a = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    torch.testing.assert_close(wasserstein_1d(a, b), torch.tensor([0.0, 1.0, 1.0]))
    # Unequal sizes: a point mass at 0.5 against uniform {0, 1} is 0.5 away.
    torch.testing.assert_close(wasserstein_1d(torch.tensor([[0.5]]), torch.tensor([[0.0, 1.0]])),
                               torch.tensor([0.5]))


def test_reach_counts_the_share_of_the_true_range() -> None:
    true = torch.linspace(0, 1, 101).expand(2, -1)
    gen = torch.stack([torch.linspace(0, 1, 50), torch.full((50,), 0.05)])  # all of it; one bin
    out = coverage_from_values(gen, true)
    assert out["coverage_reach"] == pytest.approx((1.0 + 0.1) / 2)


@pytest.mark.parametrize("name", MEASURABLE)
def test_copying_generator_scores_badly_and_the_true_nuisance_well(name: str) -> None:
    data = digits(name)
    nuisance = NUISANCES.build(name, strength=1.0)
    kw = dict(device="cpu", seed=0, n=24, styles=24, true_draws=64)
    copy = nuisance_coverage(Copy(), data, name, nuisance, **kw)
    ideal = nuisance_coverage(TrueNuisance(data, nuisance), data, name, nuisance, **kw)
    assert copy["coverage_distance"] > MAX_COVERAGE_DISTANCE, copy
    assert copy["coverage_reach"] < 0.5, copy
    assert ideal["coverage_distance"] < 0.1, ideal
    assert ideal["coverage_distance"] < 2 * ideal["noise_floor"] + 0.02, ideal
    assert ideal["coverage_reach"] > 0.8, ideal
    # copy_distance is what a copier scores on the same sources: the copier meets it exactly,
    # the true nuisance beats it.
    assert copy["coverage_distance"] == pytest.approx(copy["copy_distance"], abs=1e-6), copy
    assert ideal["coverage_distance"] < copy["copy_distance"] / 2, (ideal, copy)


def test_identity_nuisance_has_no_coverage() -> None:
    data = digits("none")
    assert nuisance_coverage(Copy(), data, "none", NUISANCES.build("none"), device="cpu", seed=0) is None


def test_quality_check_fails_a_copying_generator_and_passes_the_true_nuisance() -> None:
    data = digits("background")
    judge = fit_judge(data, device="cpu", seed=0, epochs=6)
    copy = quality_check(Copy(), data, device="cpu", seed=0, n=60, styles=4, judge=judge)
    assert copy["label_agreement"] > 0.8  # agreement alone cannot tell a copy from a generator
    assert copy["coverage_distance"] > MAX_COVERAGE_DISTANCE and not copy["passed"], copy
    ideal = quality_check(TrueNuisance(data, Background()), data, device="cpu", seed=0, n=60, styles=4,
                          judge=judge)
    assert ideal["coverage_distance"] < 0.1 and ideal["passed"], ideal


def test_each_source_is_measured_in_its_own_range() -> None:
    """A source whose nuisance spans a wide range (a thin glyph under dilation) does not shrink
    the others' distances: every source's distance is in units of its own true range."""
    true = torch.stack([torch.linspace(0, 1, 101), torch.linspace(0, 10, 101)])  # (2, 101)
    copy = torch.tensor([[0.5], [5.0]])  # each source's middle value, whatever the style
    out = coverage_from_values(copy, true)
    assert out["coverage_distance"] == pytest.approx(0.25, abs=0.01)  # E|U - 1/2| = 1/4 for both
    alone = coverage_from_values(copy[:1], true[:1])["coverage_distance"]
    assert out["coverage_distance"] == pytest.approx(alone, abs=1e-6)  # the wide source changed nothing
    flat = coverage_from_values(torch.tensor([[0.0], [5.0]]), torch.stack([torch.zeros(101), true[1]]))
    assert flat["coverage_distance"] == pytest.approx((0.0 + 0.25) / 2, abs=0.01)  # a constant source scores 0
