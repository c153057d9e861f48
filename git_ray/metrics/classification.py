"""Accuracy metrics as pure functions of tensors: per class, balanced, and by class-size group."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def per_class_accuracy(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Accuracy of each class (C,) float64 on CPU; nan for a class with no examples."""
    preds, targets = preds.detach().cpu().long(), targets.detach().cpu().long()  # (N,), (N,)
    total = torch.bincount(targets, minlength=num_classes).double()  # (C,)
    correct = torch.bincount(targets[preds == targets], minlength=num_classes).double()  # (C,)
    return torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, math.nan))


def balanced_accuracy(per_class_acc: Tensor) -> float:
    """Mean of the per-class accuracies over the classes that have examples (nan if none)."""
    return _nanmean(per_class_acc)


def group_accuracies(per_class_acc: Tensor, train_counts: Tensor, many_threshold: int,
                     few_threshold: int) -> dict[str, float]:
    """Mean per-class accuracy of the many / medium / few groups of classes by training size.

    many: count > many_threshold; few: count < few_threshold; medium: the rest. A group with
    no classes (or only classes absent from the evaluation set) is nan.
    """
    acc = per_class_acc.detach().cpu().double()  # (C,)
    counts = torch.as_tensor(train_counts).detach().cpu()  # (C,)
    many, few = counts > many_threshold, counts < few_threshold
    medium = ~(many | few)
    return {"many": _nanmean(acc[many]), "medium": _nanmean(acc[medium]), "few": _nanmean(acc[few])}


def _nanmean(x: Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.mean()) if len(x) else math.nan
