"""GIT augmentation: which part of a batch is replaced, by what, with which labels, from when."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from git_ray.config import AugmentConfig, GeneratorConfig
from git_ray.generative import GitAugmenter
from git_ray.generative.git import translate_probability
from git_ray.generative.train import train_munit
from test_generative_train import TINY, tiny_data


class MarkingMunit(torch.nn.Module):
    """A stand-in generator: 'translates' by inverting the image, and records the styles it got,
    so a test can tell translated from untranslated sources and trace each back to its source."""

    style_dim = 2

    def __init__(self):
        super().__init__()
        self.styles: list[torch.Tensor] = []

    def translate(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        self.styles.append(style)
        return -x  # [-1, 1] -> [-1, 1]; in [0, 1] this is 1 - x


def augment(**kw) -> AugmentConfig:
    return AugmentConfig(git=True, **kw)


def batch(data, n: int = 8):
    return data.x_train[:n].clone(), data.y_train[:n].clone()


def source_of(img: torch.Tensor, data, inverted: bool) -> int:
    """Index of the training image `img` came from."""
    target = 1 - img if inverted else img
    d = (data.x_train - target).abs().flatten(1).amax(1)
    i = int(d.argmin())
    assert d[i] < 1e-5
    return i


def test_inactive_before_s1_active_from_s1() -> None:
    data = tiny_data()
    aug = GitAugmenter(MarkingMunit(), data, augment(), s1=3, seed=0, device="cpu")
    x, y = batch(data)
    x2, y2 = aug(x, y, epoch=2)
    assert x2 is x and y2 is y
    x3, y3 = aug(x, y, epoch=3)
    assert x3.shape == x.shape and y3.shape == y.shape
    assert torch.equal(x3[:4], x[:4]) and torch.equal(y3[:4], y[:4])  # first (1 - gen_frac) kept
    assert not torch.equal(x3[4:], x[4:])


def test_git_start_at_epoch_zero() -> None:
    data = tiny_data()
    aug = GitAugmenter(MarkingMunit(), data, augment(git_start="start"), s1=3, seed=0, device="cpu")
    x, y = batch(data)
    assert not torch.equal(aug(x, y, epoch=0)[0], x)


@pytest.mark.parametrize("gen_frac,kept", [(0.0, 8), (0.25, 6), (0.5, 4), (0.7, 2), (1.0, 0)])
def test_generated_images_carry_their_source_labels(gen_frac: float, kept: int) -> None:
    data = tiny_data()
    aug = GitAugmenter(MarkingMunit(), data, augment(gen_frac=gen_frac), s1=0, seed=0, device="cpu")
    x, y = batch(data)
    x2, y2 = aug(x, y, epoch=0)
    assert torch.equal(x2[:kept], x[:kept])
    assert x2.min() >= 0 and x2.max() <= 1
    for img, label in zip(x2[kept:], y2[kept:]):
        assert int(data.y_train[source_of(img, data, inverted=True)]) == int(label)


def test_sources_are_class_balanced() -> None:
    data = tiny_data(counts=(40, 4, 1))
    aug = GitAugmenter(MarkingMunit(), data, augment(gen_frac=1.0), s1=0, seed=0, device="cpu")
    labels = torch.cat([aug(*batch(data, 30), epoch=0)[1] for _ in range(40)])
    freq = torch.bincount(labels, minlength=3).float() / len(labels)
    assert torch.all((freq - 1 / 3).abs() < 0.05), freq


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0])
def test_styles_are_standard_normal_times_style_scale(scale: float) -> None:
    data = tiny_data()
    munit = MarkingMunit()
    aug = GitAugmenter(munit, data, augment(gen_frac=1.0, style_scale=scale), s1=0, seed=0, device="cpu")
    for _ in range(50):
        aug(*batch(data, 40), epoch=0)
    z = torch.cat(munit.styles)  # (2000, 2)
    assert z.shape[1] == 2
    assert abs(float(z.std()) - scale) < 0.1 * max(scale, 0.1)
    assert abs(float(z.mean())) < 0.1 * max(scale, 0.1)


def test_translate_probability() -> None:
    counts = torch.tensor([12, 4, 1, 0])
    assert torch.equal(translate_probability(counts, None), torch.ones(4))
    p = translate_probability(counts, 5)
    torch.testing.assert_close(p[:3], torch.tensor([0.0, 0.25, 1.0]))
    assert torch.equal(translate_probability(counts, 1), torch.zeros(4))  # no class is below 1


def test_threshold_translates_small_classes_with_their_probability() -> None:
    data = tiny_data(counts=(12, 4, 1))  # threshold 5: class 0 never, 1 with (5-4)/(5-1), 2 always
    aug = GitAugmenter(MarkingMunit(), data, augment(gen_frac=1.0, git_threshold=5), s1=0, seed=0,
                       device="cpu")
    translated = {0: [], 1: [], 2: []}
    for _ in range(30):
        x2, y2 = aug(*batch(data, 40), epoch=0)
        for img, label in zip(x2, y2.tolist()):
            d_plain = (data.x_train - img).abs().flatten(1).amax(1).min()
            translated[label].append(bool(d_plain > 1e-5))
    rate = {c: sum(v) / len(v) for c, v in translated.items()}
    assert rate[0] == 0.0 and rate[2] == 1.0
    assert abs(rate[1] - 0.25) < 0.07, rate


def test_real_generator_output_is_in_range_detached_and_seeded() -> None:
    data = tiny_data()
    munit = train_munit(data, GeneratorConfig(steps=1, **{**TINY, "style_dim": 2}), log=lambda m: None)
    x, y = batch(data)
    outs = []
    for _ in range(2):
        aug = GitAugmenter(munit, data, augment(), s1=0, seed=7, device="cpu")
        x2, y2 = aug(x, y, epoch=0)
        assert not x2.requires_grad and x2.dtype == x.dtype
        assert x2.min() >= 0 and x2.max() <= 1
        outs.append((x2, y2))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    other = GitAugmenter(munit, data, augment(), s1=0, seed=8, device="cpu")(x, y, epoch=0)[0]
    assert not torch.equal(other, outs[0][0])
    assert not munit.training


def test_git_trial_rows_carry_the_generators_quality(tmp_path) -> None:
    """A GIT trial's row holds its generator's coverage and label agreement (from meta.json),
    through the Parquet writer, alone and as a member of a fused run; a trial without GIT holds
    nulls there."""
    import pyarrow.dataset as ds

    from git_ray.config import TrialConfig
    from git_ray.generative import read_generator_meta
    from git_ray.results import write_trial
    from git_ray.trial import run_trial, run_trials
    from tiny_configs import TINY_BASE, TINY_GEN

    cache = str(tmp_path / "gens")
    git_cfg = TrialConfig(**{**TINY_BASE, "augment": {"git": True}, "generator": {**TINY_GEN, "cache": cache}})
    fused_git_cfg = git_cfg.model_copy(update={"seed": git_cfg.seed + 1})
    plain_cfg = TrialConfig(**TINY_BASE)
    out = str(tmp_path / "res")
    write_trial(out, run_trial(git_cfg))
    for result in run_trials([fused_git_cfg, plain_cfg]):  # one fused run of two members
        write_trial(out, result)
    from git_ray.data import build_dataset
    quality = read_generator_meta(build_dataset(git_cfg.dataset), git_cfg.generator, cache=cache)["quality"]
    rows = ds.dataset(f"{out}/trials", partitioning="hive").to_table().to_pandas().set_index("trial_id")
    for cfg in (git_cfg, fused_git_cfg):
        assert rows.loc[cfg.fingerprint(), "generator_coverage"] == pytest.approx(quality["coverage_distance"])
        assert rows.loc[cfg.fingerprint(), "generator_label_agreement"] == pytest.approx(quality["label_agreement"])
    assert rows.loc[plain_cfg.fingerprint(), ["generator_coverage", "generator_label_agreement"]].isna().all()
