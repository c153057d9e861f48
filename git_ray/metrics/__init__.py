"""Metrics as pure functions of tensors: per-class and grouped accuracy, eKLD, consistency,
Spearman rank correlation. Writing them to disk is the results module's job."""
from git_ray.metrics.classification import balanced_accuracy, group_accuracies, per_class_accuracy
from git_ray.metrics.invariance import choose_images, ekld, kl_divergence
from git_ray.metrics.stats import spearman

__all__ = ["balanced_accuracy", "choose_images", "ekld", "group_accuracies", "kl_divergence",
           "per_class_accuracy", "spearman"]
