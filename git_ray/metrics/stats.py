"""Rank correlation of two per-class series (e.g. eKLD against training class size).

Plain numpy on purpose: `scipy.stats` costs about a second to import, and every Ray worker
process and every `git-ray train` would pay it for one correlation of a few dozen numbers.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from torch import Tensor


def spearman(a: Sequence[float] | np.ndarray | Tensor, b: Sequence[float] | np.ndarray | Tensor) -> float:
    """Spearman's rho over the pairs where both values are finite; nan when it is undefined
    (fewer than two pairs, or one side constant)."""
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span (as Spearman's rho needs)."""
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])  # first index of each run
    ends = np.r_[starts[1:], len(v)]  # one past the last index of each run
    mean_rank = (starts + ends + 1) / 2.0  # the mean of ranks starts+1 .. ends
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _as_array(v: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(v, Tensor):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64).ravel()
