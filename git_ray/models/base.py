"""The shape every classifier shares: a feature extractor followed by a head.

`features(x)` gives the pooled (B, D) representation; `forward(x)` gives logits (B, K).
"""
from __future__ import annotations

from torch import Tensor, nn

from git_ray.models.heads import make_head


def kaiming_init(module: nn.Module) -> None:
    """He-normal convolutions (fan-in, ReLU gain); BatchNorm starts as the identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Classifier(nn.Module):
    """`body` maps (B, C, H, W) to (B, D, h, w) (global average pooling follows) or to (B, D);
    the head follows."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, head: str):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        kaiming_init(self.body)
        self.head = make_head(head, feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, D)
        z = self.body(x)  # (B, D, h, w), or (B, D) for a body that flattens its own map
        return z.mean(dim=(2, 3)) if z.dim() == 4 else z

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.features(x))
