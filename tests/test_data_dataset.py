"""build_dataset on the bundled digits (and tiny K49 files): long tail, class order, splits,
reproducibility, cyclic reuse and the nuisance's footprint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from git_ray.config import ConfigError, DatasetConfig
from git_ray.data import LongTailData, build_dataset, dataset_fingerprint
from git_ray.data.dataset import _split_per_class
from git_ray.registry import NUISANCES, PROFILES

TENSORS = ["x_train", "y_train", "x_train_clean", "x_val", "y_val", "x_test", "y_test", "x_test_clean",
           "class_counts", "class_order"]


def cfg(**kw) -> DatasetConfig:
    base = dict(source="digits", nuisance="background", profile="zipf", imbalance_ratio=20.0)
    base.update(kw)
    return DatasetConfig(**base)


@pytest.fixture(scope="module")
def data() -> LongTailData:
    return build_dataset(cfg())


def test_types_and_shapes(data):
    assert data.num_classes == 10 and data.channels == 1 and data.image_size == 16
    for name in ("x_train", "x_train_clean", "x_val", "x_test", "x_test_clean"):
        x = getattr(data, name)
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 16, 16)
        assert x.min() >= 0 and x.max() <= 1
    for name in ("y_train", "y_val", "y_test", "class_counts", "class_order"):
        assert getattr(data, name).dtype == torch.int64
    assert data.x_train.shape == data.x_train_clean.shape and len(data.y_train) == len(data.x_train)
    assert data.x_test.shape == data.x_test_clean.shape


@pytest.mark.parametrize("profile", PROFILES.names())
def test_class_counts_follow_profile_in_instance_order(profile):
    c = cfg(profile=profile, imbalance_ratio=10.0, min_per_class=2, instance=3)
    d = build_dataset(c)
    sizes = PROFILES.build(profile, num_classes=10, imbalance_ratio=10.0, zipf_alpha=None,
                           max_per_class=100, min_per_class=2)  # digits' default max is 100
    assert d.class_counts[d.class_order].tolist() == sizes
    assert torch.equal(torch.bincount(d.y_train, minlength=10), d.class_counts)


def test_instance_changes_class_order_and_instance_zero_is_shuffled():
    orders = [build_dataset(cfg(instance=i)).class_order.tolist() for i in range(3)]
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3
    assert orders[0] != list(range(10))
    # the order belongs to the instance alone: another split seed keeps it
    assert build_dataset(cfg(instance=1, split_seed=5)).class_order.tolist() == orders[1]


def test_same_config_same_tensors_and_seeds_matter(data):
    again = build_dataset(cfg())
    for name in TENSORS:
        assert torch.equal(getattr(data, name), getattr(again, name)), name
    assert data.fingerprint == again.fingerprint
    other_split = build_dataset(cfg(split_seed=1))
    assert not torch.equal(other_split.x_test_clean, data.x_test_clean)  # another held-out set
    other_instance = build_dataset(cfg(instance=1))
    assert torch.equal(other_instance.x_test_clean, data.x_test_clean)  # same split ...
    assert not torch.equal(other_instance.x_test, data.x_test)  # ... other nuisance draws


def test_val_and_test_are_balanced_not_long_tailed(data):
    for y in (data.y_val, data.y_test):
        counts = torch.bincount(y, minlength=10)
        assert counts.min() > 0 and counts.max() / counts.min() < 1.2
    train = torch.bincount(data.y_train, minlength=10)
    assert train.max() / train.min() >= 15  # imbalance_ratio 20, rounded
    # digits: 25% test, then val_fraction (0.2) of the rest = 15% val, about 108 left per class
    n = 1797
    assert abs(len(data.y_test) - 0.25 * n) < 10 and abs(len(data.y_val) - 0.15 * n) < 10


def test_split_per_class_partitions_each_class():
    labels = np.repeat(np.arange(4), [10, 1, 0, 7])
    held, kept = _split_per_class(labels, 4, 0.3, np.random.default_rng(0))
    every = np.concatenate([held] + kept)
    assert sorted(every.tolist()) == list(range(18))  # disjoint, nothing lost
    assert [int((labels[held] == c).sum()) for c in range(4)] == [3, 0, 0, 2]  # a class keeps >= 1
    assert all((labels[k] == c).all() for c, k in enumerate(kept))


def test_cyclic_reuse_when_a_class_exceeds_its_pool():
    # A flat profile of 250 per class: each digit has about 108 training images, so each pool
    # is walked through more than twice, and every copy gets its own background draw.
    d = build_dataset(cfg(profile="none", max_per_class=250))
    assert d.class_counts.tolist() == [250] * 10
    for c in range(10):
        clean = d.x_train_clean[d.y_train == c]  # (250, 1, 16, 16)
        shown = d.x_train[d.y_train == c]
        pool = len({tuple(x.flatten().tolist()) for x in clean})
        assert 95 <= pool <= 115
        assert torch.equal(clean[:pool], clean[pool:2 * pool])  # cycles in a fixed order
        differs = (shown[:pool] != shown[pool:2 * pool]).flatten(1).any(1).float().mean()
        assert differs > 0.8  # copies drew their own background (a few may draw the same level)


def test_nuisance_is_the_only_difference(data):
    # background: foreground pixels identical, background one level per image
    fg = data.x_train_clean > 1e-6
    assert torch.equal(data.x_train[fg], data.x_train_clean[fg])
    assert not torch.equal(data.x_train, data.x_train_clean)
    fg_test = data.x_test_clean > 1e-6
    assert torch.equal(data.x_test[fg_test], data.x_test_clean[fg_test])
    # x_val carries the nuisance too: its corner pixel (background in every digit) is not all 0
    assert data.x_val[:, 0, 0, 0].max() > 0


@pytest.mark.parametrize("nuisance", NUISANCES.names())
def test_strength_zero_and_none_leave_images_clean(nuisance):
    d = build_dataset(cfg(nuisance=nuisance, nuisance_strength=0.0))
    assert torch.allclose(d.x_train, d.x_train_clean, atol=1e-6)
    assert torch.allclose(d.x_test, d.x_test_clean, atol=1e-6)
    if nuisance != "none":
        full = build_dataset(cfg(nuisance=nuisance))
        assert torch.equal(full.x_train_clean, d.x_train_clean)  # the images themselves are the same
        assert not torch.allclose(full.x_train, full.x_train_clean)


def test_fingerprint_ignores_root_only():
    a = cfg()
    assert dataset_fingerprint(a) == dataset_fingerprint(cfg(root="/elsewhere"))
    for change in ({"instance": 1}, {"nuisance": "rotation"}, {"nuisance_strength": 0.5},
                   {"imbalance_ratio": 50.0}, {"split_seed": 1}, {"image_size": 20}):
        assert dataset_fingerprint(cfg(**change)) != dataset_fingerprint(a), change


def test_to_device_moves_every_tensor(data):
    moved = data.to("cpu")
    assert isinstance(moved, LongTailData) and moved.fingerprint == data.fingerprint
    for name in TENSORS:
        assert getattr(moved, name).device.type == "cpu"


def test_image_size_and_default_max():
    d = build_dataset(cfg(image_size=12, profile="none"))
    assert d.image_size == 12 and d.x_train.shape[-2:] == (12, 12)
    assert d.class_counts.tolist() == [100] * 10


def test_real_source_with_tiny_files(tmp_path):
    # 49 classes x 6 train images: the K49 defaults ask for 4800 in the largest class, which
    # cycles through a pool of 5 (one goes to validation).
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "k49-train-imgs.npz", rng.integers(0, 256, (294, 28, 28), dtype=np.uint8))
    np.savez(tmp_path / "k49-train-labels.npz", np.arange(294) % 49)
    np.savez(tmp_path / "k49-test-imgs.npz", rng.integers(0, 256, (98, 28, 28), dtype=np.uint8))
    np.savez(tmp_path / "k49-test-labels.npz", np.arange(98) % 49)
    c = DatasetConfig(source="k49", root=str(tmp_path), nuisance="rotation", zipf_alpha=2.0,
                      min_per_class=5, image_size=14)
    d = build_dataset(c)
    assert d.num_classes == 49 and d.x_train.shape[1:] == (1, 14, 14)
    assert sorted(d.class_counts.tolist(), reverse=True)[:3] == [4800, 1200, 533]
    assert torch.bincount(d.y_val, minlength=49).tolist() == [1] * 49
    assert len(d.y_test) == 98


def test_empty_class_pool_is_a_config_error(tmp_path):
    np.savez(tmp_path / "k49-train-imgs.npz", np.zeros((48, 28, 28), np.uint8))
    np.savez(tmp_path / "k49-train-labels.npz", np.arange(48))  # class 48 has no image
    np.savez(tmp_path / "k49-test-imgs.npz", np.zeros((1, 28, 28), np.uint8))
    np.savez(tmp_path / "k49-test-labels.npz", np.zeros(1, np.int64))
    with pytest.raises(ConfigError, match="class 48 has no training images"):
        build_dataset(DatasetConfig(source="k49", root=str(tmp_path), max_per_class=10))
