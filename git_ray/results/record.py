"""What one trial hands to the results writer: `TrialResult`, and helpers that build its rows.

A trial returns plain dict rows (no pyarrow, no pandas); the writer validates them against
`git_ray.results.schema` and turns them into Parquet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from git_ray.config import TrialConfig
from git_ray.results.schema import GENERATOR_COLUMNS, PARTITION_COLUMNS


@dataclass
class TrialResult:
    """The rows of one finished trial, one list per table (trials holds exactly one row)."""

    trial_id: str
    trial: dict[str, Any]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


def head_tail_mean(train_counts: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """(mean over the largest third of classes, mean over the smallest third), by train count.

    A third is C // 3 classes, at least one; ties in the count keep the given order, so
    pass classes in rank order (largest first). NaN values are skipped; an all-NaN group is NaN.
    """
    if len(train_counts) != len(values):
        raise ValueError(f"{len(train_counts)} train counts but {len(values)} values")
    if not values:
        return math.nan, math.nan
    order = sorted(range(len(values)), key=lambda i: -float(train_counts[i]))  # stable
    k = max(1, len(values) // 3)

    def mean(idx: list[int]) -> float:
        vals = [float(values[i]) for i in idx if not math.isnan(float(values[i]))]
        return sum(vals) / len(vals) if vals else math.nan

    return mean(order[:k]), mean(order[-k:])


def build_result(
    cfg: TrialConfig,
    trial_id: str,
    metrics: Mapping[str, Any],
    per_class: Sequence[Mapping[str, Any]],
    epochs: Sequence[Mapping[str, Any]],
    *,
    train_seconds: float,
    device: str,
    optuna_trial_number: int | None = None,
) -> TrialResult:
    """Attach the config columns to a trial's metric rows.

    metrics: the trial's summary metrics (accuracy, balanced_accuracy, many/medium/few_accuracy,
    ekld_mean, ekld_size_spearman; ekld_head / ekld_tail are computed from per_class when absent;
    generator_coverage / generator_label_agreement are null when absent).
    per_class: rows with class_id, class_rank, train_count, test_count, accuracy, ekld, consistency.
    epochs: rows with epoch, lr, train_loss, train_accuracy, val_accuracy, val_balanced_accuracy,
    seconds. optuna_trial_number: the Optuna study's number for the trial when a search ran it.
    Provenance (status, version, finished_at) is filled by the writer.
    """
    flat = cfg.flat()
    metrics = dict(metrics)
    if ("ekld_head" not in metrics or "ekld_tail" not in metrics) and per_class:
        rows = sorted(per_class, key=lambda r: r["class_rank"])
        head, tail = head_tail_mean([r["train_count"] for r in rows], [r["ekld"] for r in rows])
        metrics.setdefault("ekld_head", head)
        metrics.setdefault("ekld_tail", tail)
    for c in GENERATOR_COLUMNS:  # a trial without GIT has no generator to describe
        metrics.setdefault(c, None)
    trial = {"trial_id": trial_id, **flat, **metrics, "train_seconds": float(train_seconds), "device": device,
             "optuna_trial_number": optuna_trial_number}
    part = {c: flat[c] for c in PARTITION_COLUMNS}
    return TrialResult(
        trial_id=trial_id,
        trial=trial,
        per_class=[{"trial_id": trial_id, **flat, **r} for r in per_class],
        epochs=[{"trial_id": trial_id, **part, **r} for r in epochs],
    )
