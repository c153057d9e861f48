"""Accuracy metrics on hand-checkable examples; Spearman's nan-safety."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from git_ray.metrics import balanced_accuracy, group_accuracies, per_class_accuracy, spearman


def test_per_class_accuracy_by_hand():
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    preds = torch.tensor([0, 0, 1, 0, 1, 0, 2, 0])
    acc = per_class_accuracy(preds, targets, num_classes=5)
    assert acc[:4].tolist() == [0.75, 0.5, 1.0, 0.0]
    assert math.isnan(acc[4])  # no test example of class 4
    assert balanced_accuracy(acc) == pytest.approx((0.75 + 0.5 + 1.0 + 0.0) / 4)


def test_group_accuracies_thresholds():
    acc = torch.tensor([0.9, 0.8, 0.6, 0.5, 0.2, 0.1])
    counts = torch.tensor([500, 101, 100, 20, 19, 3])
    g = group_accuracies(acc, counts, many_threshold=100, few_threshold=20)
    assert g["many"] == pytest.approx(0.85)  # > 100: 500 and 101
    assert g["medium"] == pytest.approx(0.55)  # 20..100 inclusive
    assert g["few"] == pytest.approx(0.15)  # < 20


def test_group_accuracies_empty_group_is_nan():
    g = group_accuracies(torch.tensor([0.5, 0.7]), torch.tensor([50, 60]), 100, 20)
    assert math.isnan(g["many"]) and math.isnan(g["few"]) and g["medium"] == pytest.approx(0.6)
    # a group whose classes are all absent from the test set is nan as well
    g = group_accuracies(torch.tensor([float("nan"), 0.7]), torch.tensor([500, 60]), 100, 20)
    assert math.isnan(g["many"])


def test_spearman_matches_scipy_and_is_nan_safe():
    a = [1.0, 5.0, 2.0, 8.0, 3.0]
    b = [0.3, 0.1, 0.2, 0.0, 0.4]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, float("nan")], [1, 2, 3, 0]) == pytest.approx(1.0)  # nan pair dropped
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))  # constant side: undefined
    assert math.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


@pytest.mark.parametrize("seed", range(5))
def test_spearman_with_ties_matches_scipy(seed):
    # Long-tailed class sizes tie at the floor (every class at least 5): ties get mean ranks.
    rng = np.random.default_rng(seed)
    sizes = rng.permutation(np.maximum(5, (4800 * np.arange(1, 50) ** -2.0).astype(int)))  # K49-LT
    ekld = np.round(rng.random(49), 1)  # coarse values: ties on this side too
    assert (sizes == 5).sum() > 1 and len(np.unique(ekld)) < 49
    assert spearman(sizes, ekld) == pytest.approx(spearmanr(sizes, ekld).statistic, abs=1e-12)
