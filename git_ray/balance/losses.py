"""Classification losses for long-tailed training: ce, focal, ldam, balanced_softmax.

Every loss is built as `LOSSES.build(name, class_counts=Tensor(C,), cfg=BalanceConfig)` and
called as `loss(logits (B, C), targets (B,), weight=None | Tensor(C,))`. Per-class weights are
applied as in torch's weighted cross-entropy: sum_i w[y_i] * l_i / sum_i w[y_i], so a weight
vector that is constant changes nothing and the loss scale stays comparable across epochs when
DRW switches weights on. Losses compute in float32 whatever the logits' dtype (bf16 autocast).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from git_ray.registry import LOSSES

if TYPE_CHECKING:  # git_ray.config builds defaults through the registries, which import us
    from git_ray.config import BalanceConfig


def weighted_mean(per_sample: Tensor, targets: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of per-sample losses (B,), weighted by weight[targets] when a weight is given."""
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample)[targets]  # (B,)
    return (w * per_sample).sum() / w.sum()


def _counts(class_counts: Tensor) -> Tensor:
    # A class with no training images would give an infinite margin or log(0) prior; treating it
    # as one image keeps the loss finite and leaves every other class unchanged.
    return torch.as_tensor(class_counts, dtype=torch.float64).clamp_min(1.0)


class CrossEntropy(nn.Module):
    """Plain (optionally class-weighted) cross-entropy."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:  # (B, C), (B,) -> (B,)
        return F.cross_entropy(logits.float(), targets, reduction="none")

    def forward(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return weighted_mean(self.per_sample(logits, targets), targets, weight)


class FocalLoss(CrossEntropy):
    """Focal loss (Lin et al. 2017): (1 - p_y)^gamma * CE; gamma = 0 is cross-entropy."""

    def __init__(self, num_classes: int, gamma: float):
        super().__init__(num_classes)
        self.gamma = gamma

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (B,)
        p_y = torch.exp(-ce)
        return (1.0 - p_y).clamp_min(0.0) ** self.gamma * ce


class LDAMLoss(CrossEntropy):
    """LDAM (Cao et al. 2019): CE(s * (z - m_y e_y)), margins m_c ∝ n_c^(-1/4), max `max_margin`.

    Meant for a cosine head (logits in [-1, 1]); the scale s turns cosines into useful logits.
    """

    margins: Tensor

    def __init__(self, class_counts: Tensor, max_margin: float, scale: float):
        super().__init__(len(class_counts))
        m = _counts(class_counts) ** -0.25
        self.register_buffer("margins", (m * (max_margin / m.max())).float())  # (C,)
        self.scale = scale

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        z = logits.float()  # (B, C)
        margin = self.margins.to(z.device)[targets]  # (B,)
        # Subtract the margin only at the true class: the model must beat the others by m_y.
        z = z - F.one_hot(targets, z.shape[1]).to(z) * margin[:, None]
        return F.cross_entropy(self.scale * z, targets, reduction="none")


class BalancedSoftmax(CrossEntropy):
    """Balanced Softmax (Ren et al. 2020): CE on logits + log prior during training only."""

    log_prior: Tensor

    def __init__(self, class_counts: Tensor):
        super().__init__(len(class_counts))
        n = _counts(class_counts)
        self.register_buffer("log_prior", torch.log(n / n.sum()).float())  # (C,)

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        z = logits.float() + self.log_prior.to(logits.device)  # (B, C)
        return F.cross_entropy(z, targets, reduction="none")


@LOSSES.register("ce")
def build_ce(*, class_counts: Tensor, cfg: BalanceConfig) -> CrossEntropy:
    return CrossEntropy(len(class_counts))


@LOSSES.register("focal")
def build_focal(*, class_counts: Tensor, cfg: BalanceConfig) -> FocalLoss:
    return FocalLoss(len(class_counts), cfg.focal_gamma)


@LOSSES.register("ldam")
def build_ldam(*, class_counts: Tensor, cfg: BalanceConfig) -> LDAMLoss:
    return LDAMLoss(class_counts, cfg.ldam_max_margin, cfg.ldam_scale)


@LOSSES.register("balanced_softmax")
def build_balanced_softmax(*, class_counts: Tensor, cfg: BalanceConfig) -> BalancedSoftmax:
    return BalancedSoftmax(class_counts)
