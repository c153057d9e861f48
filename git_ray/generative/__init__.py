"""GIT's generative model: MUNIT networks and training, the generator cache, GIT augmentation.

    munit = get_generator(data, cfg.generator, cache=..., device=dev)   # trained once per storage
    augmenter = GitAugmenter(munit, data, cfg.augment, s1=cfg.train.s1, seed=cfg.seed, device=dev)
    x, y = augmenter(x, y, epoch)                                          # images in [0, 1]
    quality_check(munit, data, device=dev, seed=0)   # label agreement + nuisance coverage
"""
from git_ray.generative.cache import (generator_fingerprint, generator_paths, get_generator,
                                      load_generator, quality_line, read_generator_meta)
from git_ray.generative.coverage import MEASURERS, nuisance_coverage
from git_ray.generative.git import GitAugmenter
from git_ray.generative.networks import Discriminator, Munit, build_munit
from git_ray.generative.quality import quality_check
from git_ray.generative.samples import sample_grid, sample_grid_png
from git_ray.generative.train import train_munit

__all__ = ["Discriminator", "GitAugmenter", "MEASURERS", "Munit", "build_munit", "generator_fingerprint",
           "generator_paths", "get_generator", "load_generator", "nuisance_coverage", "quality_check",
           "quality_line", "read_generator_meta", "sample_grid", "sample_grid_png", "train_munit"]
