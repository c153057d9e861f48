"""Classifier networks: CIFAR-style ResNets, a small CNN, a linear or cosine head.

Importing this package registers every arch in `git_ray.registry.ARCHS`:
`ARCHS.build(name, in_channels=..., num_classes=..., width=..., head=..., image_size=...)`.
"""
from git_ray.models import resnet, small_cnn  # noqa: F401  (registration on import)
from git_ray.models.base import Classifier
from git_ray.models.heads import CosineHead, make_head

__all__ = ["Classifier", "CosineHead", "make_head"]
