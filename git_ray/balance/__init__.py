"""Balancing: losses, class weights and samplers.

Importing this package registers every component in `git_ray.registry` (LOSSES, CLASS_WEIGHTS,
SAMPLERS); see each module for the build and call contracts.
"""
from git_ray.balance import losses, samplers, weights  # noqa: F401  (registration on import)
from git_ray.balance.losses import weighted_mean
from git_ray.balance.samplers import Sampler, epoch_generator
from git_ray.balance.weights import ClassWeights, effective_number_weights

__all__ = ["ClassWeights", "Sampler", "effective_number_weights", "epoch_generator", "weighted_mean"]
