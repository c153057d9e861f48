"""The glyphs source: rendered images (shape, range, exact-zero background, distinct classes), a
deterministic pool, and its on-disk cache (hit without rendering, corrupt entry rebuilt, key
follows the parameters). Pools here are small (a few images a class) and go to a tmp folder;
one test builds the full pool through build_dataset."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from git_ray.config import ConfigError, DatasetConfig
from git_ray.data import build_dataset, glyphs
from git_ray.registry import SOURCES

SMALL_TRAIN, SMALL_TEST = 12, 3


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder named by $GIT_RAY_CACHE_DIR."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(glyphs.ENV_CACHE_DIR, str(folder))
    return folder


@pytest.fixture
def small_pool(monkeypatch, cache) -> Path:
    """The registered source builds SMALL_TRAIN / SMALL_TEST images a class."""
    monkeypatch.setattr(glyphs, "TRAIN_PER_CLASS", SMALL_TRAIN)
    monkeypatch.setattr(glyphs, "TEST_PER_CLASS", SMALL_TEST)
    return cache


def count_renders(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = glyphs.render_pool

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(glyphs, "render_pool", counting)
    return calls


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "glyphs").glob("glyphs-*.npz"))


def test_glyph_list_is_49_distinct_characters_every_face_can_draw():
    assert len(glyphs.GLYPHS) == 49 == len(set(glyphs.GLYPHS))
    from matplotlib import ft2font

    for name, full in glyphs._faces():
        face = ft2font.FT2Font(str(glyphs._font_dir() / name))
        used = [g for g in glyphs.GLYPHS if full or (g.isascii() and g.isalnum())]
        assert all(face.get_char_index(ord(g)) != 0 for g in used), name


def test_source_pools_shape_dtype_range_and_zero_background(small_pool):
    pools = SOURCES.build("glyphs", root=None, image_size=None)
    assert pools.name == "glyphs" and pools.num_classes == 49 and pools.image_size == 28
    assert pools.default_max_per_class == 4800 and pools.channels == 1
    assert pools.x_train.shape == (49 * SMALL_TRAIN, 1, 28, 28) and pools.x_train.dtype == torch.uint8
    assert pools.x_test.shape == (49 * SMALL_TEST, 1, 28, 28) and pools.x_test.dtype == torch.uint8
    assert torch.equal(torch.bincount(pools.y_train, minlength=49), torch.full((49,), SMALL_TRAIN))
    assert torch.equal(torch.bincount(pools.y_test, minlength=49), torch.full((49,), SMALL_TEST))
    x = pools.x_train[:, 0].numpy()  # (N, 28, 28)
    # Strokes are bright and every image has ink; the background is exactly 0 and the border
    # ring is background, so the background nuisance (pixels == 0) reaches around every glyph.
    assert x.reshape(len(x), -1).max(1).min() >= 200
    zero = (x == 0).reshape(len(x), -1).mean(1)
    assert zero.min() > 0.3 and zero.max() < 0.97 and zero.mean() > 0.6
    assert (x[:, 0, :] == 0).all() and (x[:, -1, :] == 0).all()
    assert (x[:, :, 0] == 0).all() and (x[:, :, -1] == 0).all()
    # No faint halo: a non-zero pixel is at least RenderParams.zero_below.
    assert x[x > 0].min() >= glyphs.RenderParams().zero_below
    f = pools.images("test", [0, 1])
    assert f.dtype == torch.float32 and f.shape == (2, 1, 28, 28) and 0.0 <= f.min() and f.max() <= 1.0
    assert SOURCES.build("glyphs", root=None, image_size=32).images("train", [0]).shape == (1, 1, 32, 32)


def test_classes_differ_and_renderings_within_a_class_differ(small_pool):
    pools = SOURCES.build("glyphs", root=None, image_size=None)
    x = pools.x_train[:, 0].float().numpy() / 255.0  # (49 * n, 28, 28), class-major
    x = x.reshape(49, SMALL_TRAIN, 28 * 28)
    # No two images of a class are the same rendering.
    for c in range(49):
        assert len({img.tobytes() for img in x[c]}) == SMALL_TRAIN
    # Nearest class mean classifies the held-out test images far above chance (1/49): the 49
    # classes are told apart by shape. A 12-image mean is a crude classifier, hence the modest bar.
    means = x.mean(1)  # (49, 784)
    t = pools.x_test[:, 0].float().numpy().reshape(-1, 784) / 255.0
    d = ((t[:, None, :] - means[None]) ** 2).sum(-1)  # (n_test, 49)
    acc = (d.argmin(1) == pools.y_test.numpy()).mean()
    assert acc > 0.3
    # Every pair of class means is apart (no duplicated glyph).
    md = ((means[:, None] - means[None]) ** 2).sum(-1) + np.eye(49) * 1e9
    assert md.min() > 1.0


def test_render_is_deterministic_and_sizes_are_parameters():
    a = glyphs.render_pool(4, 2)
    b = glyphs.render_pool(4, 2)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(a[k], b[k]), k
    assert a["x_train"].shape == (196, 28, 28) and a["x_test"].shape == (98, 28, 28)
    assert not np.array_equal(a["x_train"][:98], a["x_test"])  # the splits are separate draws
    other = glyphs.render_pool(4, 2, replace(glyphs.RenderParams(), rotation_deg=0.0))
    assert not np.array_equal(a["x_train"], other["x_train"])


def test_recipe_and_warp_rebuild_the_pool():
    """render_recipe's masters and affines, warped, are the pool's images pixel for pixel (the
    recipe a bench re-renders from is the pool's own), and every image's master is of its class."""
    a = glyphs.render_pool(4, 2)
    masters, per_class = glyphs.render_masters(glyphs.RenderParams())
    for split, n in zip(glyphs.SPLITS, (4, 2)):
        index, theta = glyphs.render_recipe(per_class, n, glyphs.RenderParams(), glyphs.split_generator(split))
        assert index.shape == (49 * n,) and theta.shape == (49 * n, 2, 3)
        images = glyphs.warp(masters, index, theta, glyphs.RenderParams())
        assert images.dtype == torch.uint8 and np.array_equal(images.numpy(), a[f"x_{split}"]), split
        owner = {m: c for c, ms in enumerate(per_class) for m in ms}
        assert [owner[m] for m in index.tolist()] == a[f"y_{split}"].tolist()


def test_second_load_reads_the_cache_without_rendering(small_pool, monkeypatch):
    calls = count_renders(monkeypatch)
    first = SOURCES.build("glyphs", root=None, image_size=None)
    assert len(calls) == 1 and len(entries(small_pool)) == 1
    assert not list((small_pool / "glyphs").glob("*.tmp"))  # the temporary file was renamed
    second = SOURCES.build("glyphs", root=None, image_size=None)
    assert len(calls) == 1  # no second rendering
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


def test_dataset_root_is_the_cache_folder(monkeypatch, tmp_path, small_pool):
    root = tmp_path / "mine"
    SOURCES.build("glyphs", root=str(root), image_size=None)
    assert len(entries(root)) == 1 and not entries(small_pool)


def test_default_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(glyphs.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert glyphs.cache_dir(None) == tmp_path / "xdg" / "git_ray"
    monkeypatch.setenv(glyphs.ENV_CACHE_DIR, str(tmp_path / "env"))
    assert glyphs.cache_dir(None) == tmp_path / "env"
    assert glyphs.cache_dir(str(tmp_path / "root")) == tmp_path / "root"


def test_unwritable_cache_folder_is_a_config_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(glyphs.ENV_CACHE_DIR, str(blocker))
    with pytest.raises(ConfigError, match="GIT_RAY_CACHE_DIR"):
        glyphs.load_pool(None, 2, 1)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "wrong_shape"])
def test_corrupt_cache_entry_is_rebuilt_with_a_warning(small_pool, monkeypatch, caplog, damage):
    good = SOURCES.build("glyphs", root=None, image_size=None)
    (path,) = entries(small_pool)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # one byte inside x_train's data: only the CRC-32 can notice
        raw[len(raw) // 3] ^= 0x5A
        path.write_bytes(raw)
    elif damage == "garbage":
        path.write_bytes(b"this is not an npz file")
    else:  # a readable entry with the wrong shapes
        np.savez(path, x_train=np.zeros((3, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8),
                 x_test=np.zeros((3, 28, 28), np.uint8), y_test=np.zeros(3, np.uint8))
    calls = count_renders(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="git_ray.data.glyphs"):
        again = SOURCES.build("glyphs", root=None, image_size=None)
    assert len(calls) == 1 and "rebuilding" in caplog.text
    assert torch.equal(again.x_train, good.x_train) and torch.equal(again.y_train, good.y_train)
    calls.clear()
    SOURCES.build("glyphs", root=None, image_size=None)  # the rebuilt entry is good
    assert not calls


def test_cache_key_follows_parameters_sizes_and_fonts(monkeypatch):
    base = glyphs.cache_key(glyphs.RenderParams(), 10, 2)
    assert base == glyphs.cache_key(glyphs.RenderParams(), 10, 2)
    assert base != glyphs.cache_key(replace(glyphs.RenderParams(), slant=0.1), 10, 2)
    assert base != glyphs.cache_key(replace(glyphs.RenderParams(), stroke_kernels=(1, 3)), 10, 2)
    assert base != glyphs.cache_key(glyphs.RenderParams(), 11, 2)
    assert base != glyphs.cache_key(glyphs.RenderParams(), 10, 3)
    hashes = dict(glyphs.font_hashes())
    hashes["DejaVuSans.ttf"] = "0" * 64  # another version of one font file
    monkeypatch.setattr(glyphs, "font_hashes", lambda: hashes)
    assert base != glyphs.cache_key(glyphs.RenderParams(), 10, 2)


def test_changed_parameters_make_a_new_entry(cache):
    glyphs.load_pool(None, 2, 1)
    glyphs.load_pool(None, 2, 1, replace(glyphs.RenderParams(), shift=0.0))
    assert len(entries(cache)) == 2


def test_build_dataset_is_deterministic_under_split_seed(small_pool):
    cfg = DatasetConfig(source="glyphs", nuisance="background", profile="zipf", zipf_alpha=2.0,
                        max_per_class=8, min_per_class=2, val_fraction=0.25, split_seed=3)
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.class_counts, b.class_counts)
    c = build_dataset(cfg.model_copy(update={"split_seed": 4}))
    assert torch.equal(a.class_counts, c.class_counts)  # the same instance: the same sizes
    assert not torch.equal(a.x_train, c.x_train)  # another split: other images and draws
    assert a.num_classes == 49 and a.x_train.shape[1:] == (1, 28, 28)


def test_full_pool_gives_k49_lt_sizes(cache):
    """The one full-size build (about 330k images): K49-LT's 4,800 .. 5 after the 20% split."""
    cfg = DatasetConfig(source="glyphs", nuisance="none", profile="zipf", zipf_alpha=2.0,
                        max_per_class=4800, min_per_class=5, val_fraction=0.2)
    pools = SOURCES.build("glyphs", root=None, image_size=None)
    assert pools.x_train.shape == (49 * 6000, 1, 28, 28) and pools.x_test.shape == (49 * 700, 1, 28, 28)
    data = build_dataset(cfg)
    counts = data.class_counts
    assert int(counts.max()) == 4800 and int(counts.min()) == 5 and len(counts) == 49
    # 4,800 distinct images in the largest class: its pool was not cycled.
    big = int(counts.argmax())
    imgs = data.x_train_clean[data.y_train == big]
    assert len({bytes(i.numpy().tobytes()) for i in (imgs[:, 0] * 255).round().to(torch.uint8)}) == 4800
    assert len(data.y_val) == 49 * 1200 and len(data.y_test) == 49 * 700


def test_bench_pictures_and_sanity_run_on_a_small_pool(small_pool, tmp_path, capsys):
    from PIL import Image

    from bench import bench_glyphs

    bench_glyphs.main(["--pictures", str(tmp_path)])
    classes = Image.open(tmp_path / "glyphs_classes.png")
    nuisances = Image.open(tmp_path / "glyphs_nuisances.png")
    assert classes.size[0] > classes.size[1] > 7 * 28 and nuisances.size[1] == 4 * 30 * 2
    figs = bench_glyphs.main(["--no-timing", "--sanity", "--per-class", "4", "--epochs", "1"])
    assert 0.0 <= figs["sanity_accuracy"] <= 1.0 and "test accuracy" in capsys.readouterr().out
