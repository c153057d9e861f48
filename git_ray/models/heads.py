"""Classifier heads: a plain linear layer, or a cosine head (normalised features and weights).

The cosine head returns the cosine between each feature vector and each class's weight vector,
so its outputs lie in [-1, 1]; LDAM multiplies them by its scale s before the softmax.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineHead(nn.Module):
    """logits[b, c] = <x_b / |x_b|, w_c / |w_c|>, a cosine in [-1, 1]."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))  # (K, D)
        nn.init.kaiming_normal_(self.weight, nonlinearity="linear")

    def forward(self, x: Tensor) -> Tensor:  # (B, D) -> (B, K)
        x = F.normalize(x, dim=1)
        w = F.normalize(self.weight, dim=1)
        # Rounding (e.g. under bf16 autocast) can push a cosine a hair past 1.
        return (x @ w.t()).clamp(-1.0, 1.0)


def _linear(in_features: int, num_classes: int) -> nn.Module:
    layer = nn.Linear(in_features, num_classes)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    nn.init.zeros_(layer.bias)
    return layer


HEADS: dict[str, Callable[[int, int], nn.Module]] = {"linear": _linear, "cosine": CosineHead}


def make_head(head: str, in_features: int, num_classes: int) -> nn.Module:
    """Build the head named `head` ("linear" or "cosine")."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(sorted(HEADS))}")
    return HEADS[head](in_features, num_classes)
