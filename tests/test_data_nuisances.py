"""Nuisance transforms: contract tests over every registered nuisance, then each one's own law."""
from __future__ import annotations

import pytest
import torch

from git_ray.data.nuisances import BACKGROUND_MAX, _morph, apply_nuisance
from git_ray.registry import NUISANCES

NAMES = NUISANCES.names()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def strokes(b: int = 16, size: int = 16, channels: int = 1) -> torch.Tensor:
    """An asymmetric 'L' on a zero background, brightness varying per image: (B, C, S, S)."""
    x = torch.zeros(b, channels, size, size)
    x[:, :, 3:13, 4:6] = 1.0  # vertical bar
    x[:, :, 11:13, 4:11] = 0.7  # foot to the right
    return x * torch.linspace(0.5, 1.0, b).view(b, 1, 1, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_kept(name, channels):
    x = strokes(channels=channels)
    y = NUISANCES.build(name, strength=1.0)(x, gen())
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert y is not x  # a new tensor: callers may keep the clean batch


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_output_and_input_untouched(name):
    x = strokes()
    before = x.clone()
    nuis = NUISANCES.build(name, strength=1.0)
    a, b = nuis(x, gen(3)), nuis(x, gen(3))
    assert torch.equal(a, b)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "none"])
def test_draws_differ_between_images_and_seeds(name):
    x = strokes(b=32)
    x[:] = x[0]  # the same image 32 times: differences can only come from the draws
    nuis = NUISANCES.build(name, strength=1.0)
    y = nuis(x, gen(0))
    distinct = {tuple(img.flatten().tolist()) for img in y}
    assert len(distinct) >= 3  # one independent draw per image
    assert not torch.equal(y, nuis(x, gen(1)))


@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_is_identity(name):
    x = strokes()
    assert torch.allclose(NUISANCES.build(name, strength=0.0)(x, gen()), x, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cpu_generator_with_tensor_of_other_dtype_and_empty_batch(name):
    nuis = NUISANCES.build(name, strength=0.5)
    x = strokes().double()
    assert nuis(x, gen()).dtype == torch.float64
    assert nuis(strokes(b=0), gen()).shape == (0, 1, 16, 16)


@pytest.mark.parametrize("name", NAMES)
def test_bad_strength_and_shape_rejected(name):
    with pytest.raises(ValueError):
        NUISANCES.build(name, strength=1.5)
    with pytest.raises(ValueError, match="B, C, H, W"):
        NUISANCES.build(name, strength=1.0)(torch.zeros(1, 16, 16), gen())


@pytest.mark.parametrize("name", NAMES)
def test_apply_nuisance_chunked_is_reproducible(name):
    x = strokes(b=20)
    nuis = NUISANCES.build(name, strength=1.0)
    a = apply_nuisance(nuis, x, gen(5), chunk=7)
    assert a.shape == x.shape
    assert torch.equal(a, apply_nuisance(nuis, x, gen(5), chunk=7))


def test_unknown_nuisance_lists_choices():
    with pytest.raises(KeyError, match="rotation"):
        NUISANCES.build("rotate", strength=1.0)


# --- rotation ---------------------------------------------------------------------------------


def test_rotation_changes_asymmetric_images():
    x = strokes(b=32)
    y = NUISANCES.build("rotation", strength=1.0)(x, gen())
    changed = ((y - x).abs().flatten(1).amax(1) > 0.2).float().mean()
    assert changed > 0.8  # only angles within a few degrees of 0 would leave the 'L' in place


def test_rotation_is_about_the_centre_and_keeps_mass():
    # A centred disk is rotation-invariant: any angle about the centre must leave it (nearly) alone.
    size = 24
    coords = torch.arange(size) - (size - 1) / 2
    r = (coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2).sqrt()
    disk = (r < 6).float().view(1, 1, size, size).expand(16, 1, size, size)
    y = NUISANCES.build("rotation", strength=1.0)(disk, gen())
    assert (y - disk).abs().mean() < 0.02
    # The off-centre 'L' sits inside the inscribed circle, so its mass survives any rotation.
    x = strokes(b=16)
    y = NUISANCES.build("rotation", strength=1.0)(x, gen(2))
    ratio = y.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert torch.all((ratio - 1).abs() < 0.1)


def test_rotation_strength_bounds_angle():
    # Strength 0.01 allows at most 1.8 degrees: the 'L' barely moves.
    x = strokes(b=16)
    small = NUISANCES.build("rotation", strength=0.01)(x, gen())
    big = NUISANCES.build("rotation", strength=1.0)(x, gen())
    assert (small - x).abs().mean() < 0.3 * (big - x).abs().mean()


def test_rotation_by_quarter_turns_matches_rot90():
    # Replay the transform's angle draws (one uniform per image, first), pick images whose
    # angle is near +90 or -90 degrees and compare with torch.rot90: opposite signs must give
    # opposite quarter turns, so this checks the angle's scale, sign and centre at once.
    x = strokes(b=1024)
    u = torch.rand(1024, generator=gen(11))
    y = NUISANCES.build("rotation", strength=1.0)(x, gen(11))
    angle = (2 * u - 1) * 180
    best_k = {}
    for target in (90, -90):
        idx = torch.nonzero((angle - target).abs() < 1.5).flatten()
        assert len(idx) > 0
        errs = {k: torch.stack([(y[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().mean() for i in idx]).max()
                for k in (1, -1)}
        best_k[target] = min(errs, key=errs.get)
        assert errs[best_k[target]] < 0.03 < errs[-best_k[target]]
    assert best_k[90] == -best_k[-90]


# --- background -------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_background_fills_only_background_with_one_level_per_image(channels):
    x = strokes(b=64, channels=channels)
    y = NUISANCES.build("background", strength=1.0)(x, gen())
    fg = x > 1e-6
    assert torch.equal(y[fg], x[fg])
    levels = []
    for xi, yi in zip(x, y):
        bg = yi[~(xi > 1e-6)]
        assert torch.all(bg == bg[0])  # one intensity per image
        levels.append(round(bg[0].item() * 255))
        assert abs(bg[0].item() * 255 - levels[-1]) < 1e-3  # an integer level out of 255
    assert min(levels) >= 0 and max(levels) <= BACKGROUND_MAX
    assert max(levels) > 60 and len(set(levels)) > 20  # the whole 0..99 range is used


def test_background_pixel_means_all_channels_zero():
    x = torch.zeros(4, 3, 8, 8)
    x[:, 0, :4] = 0.5  # red top half: not background, though green and blue are 0 there
    y = NUISANCES.build("background", strength=1.0)(x, gen())
    assert torch.equal(y[:, :, :4], x[:, :, :4])


def test_background_strength_scales_the_top_level():
    x = strokes(b=256)
    y = NUISANCES.build("background", strength=0.5)(x, gen())
    top = round(BACKGROUND_MAX * 0.5)
    bg_level = y[:, 0, 0, 0] * 255  # corner pixel is background in every image
    assert bg_level.max() <= top + 1e-3 and bg_level.max() >= top - 10


# --- dilation ---------------------------------------------------------------------------------


def test_morph_even_and_odd_kernels_keep_size():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    for k, area in ((1, 1), (2, 4), (3, 9), (4, 16)):
        d = _morph(x, k, dilate=True)
        assert d.shape == x.shape and int(d.sum()) == area
        assert d[0, 0, 4, 4] == 1.0  # the anchor pixel stays covered
    block = torch.zeros(1, 1, 9, 9)
    block[0, 0, 2:6, 2:6] = 1.0
    assert int(_morph(block, 2, dilate=False).sum()) == 9  # a 4x4 block erodes to 3x3
    assert int(_morph(block, 3, dilate=False).sum()) == 4
    ones = torch.ones(1, 1, 5, 5)
    assert torch.equal(_morph(ones, 2, dilate=False), ones)  # the border does not erode


def test_dilation_kernel_distribution_on_a_single_pixel():
    # A lone pixel becomes a k x k square (areas 4, 9, 16), vanishes (erosion k=2) or stays
    # (erosion k=1): the observed areas reveal each draw.
    x = torch.zeros(600, 1, 12, 12)
    x[:, 0, 6, 6] = 1.0
    y = NUISANCES.build("dilation", strength=1.0)(x, gen())
    areas = y.sum((1, 2, 3)).round().long()
    frac = {a: (areas == a).float().mean().item() for a in (0, 1, 4, 9, 16)}
    assert abs(sum(frac.values()) - 1) < 1e-6
    assert abs(frac[4] + frac[9] + frac[16] - 0.6) < 0.08  # dilation with probability 0.6
    for a in (4, 9, 16):
        assert abs(frac[a] - 0.2) < 0.07
    for a in (0, 1):
        assert abs(frac[a] - 0.2) < 0.07


def test_dilation_each_image_is_dilated_eroded_or_kept():
    x = strokes(b=64)
    y = NUISANCES.build("dilation", strength=1.0)(x, gen())
    n_up = n_down = 0
    for xi, yi in zip(x, y):
        up, down = bool(torch.all(yi >= xi)), bool(torch.all(yi <= xi))
        assert up or down
        n_up += up and not down
        n_down += down and not up
    assert n_up > 20 and n_down > 5


def test_dilation_strength_is_probability_of_transforming():
    x = torch.zeros(800, 1, 12, 12)
    x[:, 0, 6, 6] = 1.0
    y = NUISANCES.build("dilation", strength=0.5)(x, gen())
    unchanged = (y == x).flatten(1).all(1).float().mean().item()
    # untouched (0.5) plus erosion with k=1 among the transformed (0.5 * 0.4 * 0.5)
    assert abs(unchanged - (0.5 + 0.5 * 0.2)) < 0.06


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cpu_generator_with_cuda_batch_matches_cpu(name):
    # Parameters are drawn on the generator's device, so a CUDA batch gets the CPU batch's draws.
    x = strokes(b=8)
    nuis = NUISANCES.build(name, strength=1.0)
    on_gpu = nuis(x.cuda(), gen(9))
    assert on_gpu.is_cuda
    assert torch.allclose(on_gpu.cpu(), nuis(x, gen(9)), atol=1e-4)


def test_dilation_chain_equals_the_max_pool_reference():
    """The registered dilation (chained 2x2 maxima) gives, image by image, exactly what
    `_morph` (one max-pool with the drawn kernel, OpenCV's anchors) gives."""
    from git_ray.data.nuisances import Dilation

    x = (torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    x = x * torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    out = Dilation(strength=1.0)(x, torch.Generator().manual_seed(3))
    # replay the same draws to learn each image's kernel
    g = torch.Generator().manual_seed(3)
    torch.rand(64, generator=g)  # applied
    dilate = torch.rand(64, generator=g) < Dilation.P_DILATE
    k_dil = torch.randint(0, 3, (64,), generator=g)
    k_ero = torch.randint(0, 2, (64,), generator=g)
    seen = set()
    for i in range(64):
        k, is_dil = (Dilation.DILATE_K[k_dil[i]], True) if dilate[i] else (Dilation.ERODE_K[k_ero[i]], False)
        seen.add((k, is_dil))
        assert torch.equal(out[i:i + 1], _morph(x[i:i + 1], k, is_dil)), (i, k, is_dil)
    assert {(2, True), (3, True), (4, True), (2, False), (1, False)} <= seen  # every kernel was tried
