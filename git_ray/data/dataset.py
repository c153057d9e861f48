"""Build one long-tailed, nuisance-transformed data set from a `DatasetConfig`.

    data = build_dataset(cfg.dataset)      # -> LongTailData, tensors on the CPU

Recipe (METHOD.md's K49-LT, applied to every source):
1. Read the source's official pools. A source without a test split (digits) holds out 25% of
   each class as test, seeded by `split_seed`; the rest is its "official" train pool.
2. Split the train pool per class into train and validation (`val_fraction`, seeded by
   `split_seed`). Validation and test keep the pool's class balance: they are not long-tailed.
   Digits with the default 0.2: 25% test, 15% val, 60% (about 108 per class) to draw from.
3. Class sizes come from the profile in rank order; the class order (rank -> class id) is a
   permutation seeded by `instance` alone, so every instance, 0 included, is its own shuffle and
   the same instance means the same order under any split seed.
4. A class asking for more images than its pool holds reuses the pool cyclically.
5. One nuisance draw per image (every reused copy its own draw) for train, val and test, from a
   torch.Generator seeded by (split_seed, instance). The clean train and test images are kept
   (oracle augmentation and eKLD draw fresh nuisances on the clean image).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from git_ray.data.nuisances import apply_nuisance
from git_ray.data.sources import SourcePools, config_error
from git_ray.registry import NUISANCES, PROFILES, SOURCES

if TYPE_CHECKING:  # only for annotations; see sources.config_error for why not at run time
    from git_ray.config import DatasetConfig

DATA_VERSION = 1  # bump when the recipe changes, so old fingerprints (and cached generators) expire
HOLDOUT_TEST_FRACTION = 0.25  # per class, for sources without an official test split
NUISANCE_CHUNK = 4096  # images per nuisance call; part of the recipe (draw order depends on it)
_SPLIT_TAG, _ORDER_TAG, _NUISANCE_TAG = 1, 2, 3  # keep the three random streams independent


@dataclass
class LongTailData:
    """A long-tailed training set with its balanced validation and test sets. Images are
    float32 (N, C, H, W) in [0, 1], labels int64 (N,)."""

    x_train: Tensor  # long-tailed, nuisance applied (one draw per image)
    y_train: Tensor
    x_train_clean: Tensor  # the same images before the nuisance
    x_val: Tensor  # nuisance applied; the pool's class balance
    y_val: Tensor
    x_test: Tensor  # nuisance applied
    y_test: Tensor
    x_test_clean: Tensor  # the same test images before the nuisance
    class_counts: Tensor  # (C,) int64 realised training counts, indexed by class id
    num_classes: int
    channels: int
    image_size: int
    fingerprint: str  # dataset_fingerprint(cfg): equal for configs that give the same data
    class_order: Tensor | None = None  # (C,) int64: class_order[rank] = class id, rank 0 largest
    nuisance: str = "none"  # the registered nuisance applied (what a generator should learn)
    nuisance_strength: float = 0.0

    def to(self, device: torch.device | str) -> "LongTailData":
        """A copy with every tensor on `device`."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)


def dataset_fingerprint(cfg: DatasetConfig) -> str:
    """Stable id of the data a config describes: every field except `root` (the same files in
    another folder are the same data), plus the recipe version."""
    from git_ray.config import stable_hash

    return stable_hash({"data_version": DATA_VERSION, **cfg.model_dump(exclude={"root"})})


def _seed(*parts: int) -> int:
    """A 63-bit torch seed from several integers (SeedSequence mixes them properly)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _split_per_class(labels: np.ndarray, num_classes: int, frac: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """Hold out round(frac * n_c) images of every class at random (never the last one).

    Returns (held-out positions, sorted; per class, the kept positions in random order)."""
    # One lexsort gives every class's members in random order, without a Python loop over images.
    order = np.lexsort((rng.random(labels.shape[0]), labels))  # (N,)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_classes))])
    held, kept = [], []
    for c in range(num_classes):
        members = order[bounds[c]:bounds[c + 1]]
        n_held = min(int(frac * len(members) + 0.5), max(len(members) - 1, 0))
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return np.sort(np.concatenate(held)).astype(np.int64), kept


def _class_sizes(cfg: DatasetConfig, pools: SourcePools, pool_sizes: list[int]) -> list[int]:
    max_per_class = cfg.max_per_class or pools.default_max_per_class or max(pool_sizes)
    return PROFILES.build(cfg.profile, num_classes=pools.num_classes, imbalance_ratio=cfg.imbalance_ratio,
                          zipf_alpha=cfg.zipf_alpha, max_per_class=max_per_class,
                          min_per_class=cfg.min_per_class)


def build_dataset(cfg: DatasetConfig) -> LongTailData:
    """Read the source, split, make long-tailed, apply one nuisance draw per image (CPU)."""
    pools: SourcePools = SOURCES.build(cfg.source, root=cfg.root, image_size=cfg.image_size)
    C = pools.num_classes
    split_rng = np.random.default_rng([cfg.split_seed, _SPLIT_TAG])
    y_all = pools.y_train.numpy()

    # 1. test set: the official one, or a per-class hold-out of the train pool.
    if pools.x_test is None:
        test_pos, kept = _split_per_class(y_all, C, HOLDOUT_TEST_FRACTION, split_rng)
        pool_idx = np.sort(np.concatenate(kept)).astype(np.int64)
        x_test_clean, y_test = pools.images("train", test_pos), pools.y_train[test_pos]
    else:
        pool_idx = np.arange(len(y_all), dtype=np.int64)
        x_test_clean, y_test = pools.images("test"), pools.y_test.clone()

    # 2. validation: a per-class share of the train pool; the rest feeds the long tail.
    val_pos, kept = _split_per_class(y_all[pool_idx], C, cfg.val_fraction, split_rng)
    val_idx = pool_idx[val_pos]
    class_pools = [pool_idx[k] for k in kept]  # per class, source indices in random order

    # 3. sizes in rank order, and the instance's class order.
    sizes = _class_sizes(cfg, pools, [len(p) for p in class_pools])
    order = np.random.default_rng([cfg.instance, _ORDER_TAG]).permutation(C)  # rank -> class id
    counts = np.zeros(C, dtype=np.int64)
    counts[order] = sizes

    # 4. the long tail; a class larger than its pool cycles through it.
    chosen = []
    for c in range(C):
        if counts[c] and not len(class_pools[c]):
            raise config_error(f"source {cfg.source!r}: class {c} has no training images left after "
                              f"the validation split (val_fraction={cfg.val_fraction}); the data "
                              "folder is incomplete or too small")
        chosen.append(class_pools[c][np.arange(counts[c]) % max(len(class_pools[c]), 1)])
    train_idx = np.concatenate(chosen).astype(np.int64)

    # 5. one nuisance draw per image, in a fixed order: train, val, test.
    nuisance = NUISANCES.build(cfg.nuisance, strength=cfg.nuisance_strength)
    gen = torch.Generator().manual_seed(_seed(cfg.split_seed, cfg.instance, _NUISANCE_TAG))
    x_train_clean = pools.images("train", train_idx)
    x_val_clean = pools.images("train", val_idx)
    x_train = apply_nuisance(nuisance, x_train_clean, gen, NUISANCE_CHUNK)
    x_val = apply_nuisance(nuisance, x_val_clean, gen, NUISANCE_CHUNK)
    x_test = apply_nuisance(nuisance, x_test_clean, gen, NUISANCE_CHUNK)

    return LongTailData(
        x_train=x_train, y_train=pools.y_train[torch.from_numpy(train_idx)], x_train_clean=x_train_clean,
        x_val=x_val, y_val=pools.y_train[torch.from_numpy(val_idx)],
        x_test=x_test, y_test=y_test, x_test_clean=x_test_clean,
        class_counts=torch.from_numpy(counts), num_classes=C, channels=pools.channels,
        image_size=pools.image_size, fingerprint=dataset_fingerprint(cfg),
        class_order=torch.from_numpy(order.astype(np.int64)),
        nuisance=cfg.nuisance, nuisance_strength=cfg.nuisance_strength,
    )
