"""Rank correlation of two per-class series (e.g. eKLD against training class size)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import spearmanr
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
    return float(spearmanr(x, y).statistic)


def _as_array(v: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(v, Tensor):
        v = v.detach().cpu().double().numpy()
    return np.asarray(v, dtype=np.float64).ravel()
