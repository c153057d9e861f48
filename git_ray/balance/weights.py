"""Per-class loss weights with their schedule: none, reweight, drw.

`CLASS_WEIGHTS.build(name, class_counts=Tensor(C,), cfg=BalanceConfig, s1=int)` returns an
object whose `for_epoch(epoch)` gives the weights for that (0-based) epoch, or None for
unweighted. Weights follow the "effective number" of Cui et al. (2019), (1 - beta) / (1 - beta^n_c),
normalised to sum to C. DRW (deferred re-weighting) is unweighted before epoch s1 and weighted
from epoch s1 on, so the schedule lives here and not in the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from git_ray.registry import CLASS_WEIGHTS

if TYPE_CHECKING:  # git_ray.config builds defaults through the registries, which import us
    from git_ray.config import BalanceConfig


def effective_number_weights(class_counts: Tensor, beta: float) -> Tensor:
    """(1 - beta) / (1 - beta^n_c), normalised to sum to C; float32 (C,)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64).clamp_min(1.0)  # empty class: as n=1
    w = (1.0 - beta) / (1.0 - beta**n)
    return (w * (len(w) / w.sum())).float()


@dataclass(frozen=True)
class ClassWeights:
    """Weights `weights` from epoch `start` on (start = 0: always); None before; None weights: never."""

    weights: Tensor | None
    start: int = 0

    def for_epoch(self, epoch: int) -> Tensor | None:
        if self.weights is None or epoch < self.start:
            return None
        return self.weights


@CLASS_WEIGHTS.register("none")
def build_none(*, class_counts: Tensor, cfg: BalanceConfig, s1: int) -> ClassWeights:
    return ClassWeights(None)


@CLASS_WEIGHTS.register("reweight")
def build_reweight(*, class_counts: Tensor, cfg: BalanceConfig, s1: int) -> ClassWeights:
    return ClassWeights(effective_number_weights(class_counts, cfg.reweight_beta), start=0)


@CLASS_WEIGHTS.register("drw")
def build_drw(*, class_counts: Tensor, cfg: BalanceConfig, s1: int) -> ClassWeights:
    return ClassWeights(effective_number_weights(class_counts, cfg.reweight_beta), start=s1)
