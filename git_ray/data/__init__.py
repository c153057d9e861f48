"""Data: sources (official pools on disk or bundled), long-tail profiles, nuisance transforms,
and `build_dataset`, which turns a `DatasetConfig` into a `LongTailData`.

Importing this package registers every source, profile and nuisance in `git_ray.registry`.
"""
from git_ray.data import glyphs, nuisances, profiles, sources  # noqa: F401  (registration on import)
from git_ray.data.dataset import DATA_VERSION, LongTailData, build_dataset, dataset_fingerprint
from git_ray.data.nuisances import Nuisance, apply_nuisance
from git_ray.data.sources import SourcePools

__all__ = ["DATA_VERSION", "LongTailData", "Nuisance", "SourcePools", "apply_nuisance",
           "build_dataset", "dataset_fingerprint"]
