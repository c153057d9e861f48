"""MUNIT networks: shapes round-trip at every supported size, styles matter, inits are seeded."""
from __future__ import annotations

import pytest
import torch

from git_ray.config import GeneratorConfig
from git_ray.generative.networks import (Discriminator, Munit, adain, build_munit, center_crop,
                                         discriminator_layers, pad_to_multiple)

SMALL = dict(dim=4, style_dim=3, n_res=1, mlp_dim=8)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 28, 32])
@pytest.mark.parametrize("n_down", [1, 2, 3])
def test_sizes_round_trip(channels: int, size: int, n_down: int) -> None:
    m = Munit(in_channels=channels, image_size=size, n_downsample=n_down, **SMALL)
    x = torch.rand(2, channels, size, size) * 2 - 1  # (B, C, H, W)
    content, style = m.encode(x)
    assert content.shape == (2, 4 * 2 ** n_down, -(-size // 2 ** n_down), -(-size // 2 ** n_down))
    assert style.shape == (2, 3)
    y = m.decode(content, style)
    assert y.shape == x.shape
    assert y.abs().max() <= 1  # tanh output
    d = Discriminator(channels, 4, size)(y)
    assert d.shape[:2] == (2, 1) and min(d.shape[-2:]) >= 1


def test_content_code_at_28px_is_7x7() -> None:
    m = Munit(in_channels=1, image_size=28, n_downsample=2, **SMALL)
    assert m.encode(torch.zeros(1, 1, 28, 28))[0].shape[-2:] == (7, 7)


@pytest.mark.parametrize("size", [8, 9, 16, 28, 32, 64])
def test_discriminator_never_below_one_pixel(size: int) -> None:
    n = discriminator_layers(size)
    assert 1 <= n <= 4
    assert size // 2 ** n >= 1
    out = Discriminator(1, 4, size)(torch.zeros(1, 1, size, size))
    assert min(out.shape[-2:]) >= 1


def test_dis_layers_and_dis_dim_make_a_patch_discriminator() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 28, 28)
    _, paper = build_munit(in_channels=1, image_size=28, gcfg=GeneratorConfig(steps=1, **SMALL), generator=gen)
    assert paper(x).shape == (2, 1, 1, 1)  # METHOD.md's 4 layers: one score for a 28-px image
    _, patch = build_munit(in_channels=1, image_size=28, generator=gen,
                           gcfg=GeneratorConfig(steps=1, dis_layers=2, dis_dim=12, **SMALL))
    assert patch(x).shape == (2, 1, 7, 7)  # a score per patch
    convs = [m for m in patch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [12, 24, 1]  # dis_dim, doubled, the score
    _, capped = build_munit(in_channels=1, image_size=8, gcfg=GeneratorConfig(steps=1, dis_layers=4, **SMALL),
                            generator=gen)
    assert capped(torch.zeros(1, 1, 8, 8)).shape[-2:] == (1, 1)  # never below one pixel


def test_too_small_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="n_downsample"):
        Munit(in_channels=1, image_size=8, n_downsample=3, **SMALL)


def test_pad_and_crop_are_inverse() -> None:
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(1, 2, 28, 28)
    p = pad_to_multiple(x, 8)
    assert p.shape[-2:] == (32, 32)
    assert torch.equal(center_crop(p, 28), x)


def test_adain_sets_per_sample_statistics() -> None:
    x = torch.randn(2, 3, 5, 5) * 4 + 7
    scale = torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.0, 0.0]])
    shift = torch.tensor([[1.0, -2.0, 0.0], [0.0, 3.0, 5.0]])
    y = adain(x, scale, shift)
    torch.testing.assert_close(y.mean(dim=(2, 3)), shift, atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), (1 + scale).abs(), atol=1e-3, rtol=0)


def test_style_changes_output_and_content_is_kept_per_image() -> None:
    torch.manual_seed(0)  # test-local: inputs only
    m = Munit(in_channels=1, image_size=16, n_downsample=2, **SMALL).eval()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    s1, s2 = torch.randn(2, 3), torch.randn(2, 3)
    assert not torch.allclose(m.translate(x, s1), m.translate(x, s2))
    # translate = decode(content(x), style): batch items do not mix
    y = m.translate(x, s1)
    torch.testing.assert_close(m.translate(x[:1], s1[:1]), y[:1])


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    g = GeneratorConfig(steps=1, **SMALL)
    before = torch.get_rng_state()
    a, da = build_munit(in_channels=1, image_size=16, gcfg=g, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)
    b, db = build_munit(in_channels=1, image_size=16, gcfg=g, generator=torch.Generator().manual_seed(3))
    c, _ = build_munit(in_channels=1, image_size=16, gcfg=g, generator=torch.Generator().manual_seed(4))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    for va, vb in zip(da.state_dict().values(), db.state_dict().values()):
        assert torch.equal(va, vb)


def test_from_spec_rebuilds_the_same_module() -> None:
    m = Munit(in_channels=3, image_size=28, n_downsample=2, **SMALL)
    r = Munit.from_spec(m.spec)
    r.load_state_dict(m.state_dict())
    x = torch.rand(1, 3, 28, 28)
    z = torch.randn(1, 3)
    torch.testing.assert_close(m.translate(x, z), r.translate(x, z))
