"""Nuisance coverage: does a generator's style code span the nuisance's true range?

A measurer reads a nuisance's parameter out of an image, given the clean source it was made
from, without asking the generator anything:

    background -> the mean intensity of the pixels that are background (0) in the clean source
                  (the border median where the source has none)
    dilation   -> stroke area of the image over stroke area of its clean source (pixels > 0.5)
    rotation   -> the angle (degrees) whose rotation of the source best matches the image, from
                  a grid of angles searched in one batched call
    none       -> nothing to measure (coverage is not defined)

`MEASURERS` is keyed like `NUISANCES`, and a test makes every registered nuisance have one.

A generator's coverage (`nuisance_coverage`): n class-balanced training images are held fixed as
content, each decoded under `styles` random style codes; the parameter is measured on each
output against the image's clean source. The reference is the true nuisance applied `true_draws`
times to the same clean sources, measured the same way. Per source, the 1-Wasserstein distance
between the generated and the true values, divided by the width of that source's true values'
range, averaged over sources: 0 = the style code alone reproduces the nuisance's distribution for
every content; a generator that copies its input (one value per source, whatever the style) scores
about 1/3 on a uniform nuisance. Comparing per source (not pooled) matters: the training images
already carry one nuisance draw each, so a copying generator's pooled values look right. So does
each source's own width: a dilation's stroke-area ratio spans 0.5-2 on a bold glyph and 0.3-6 on
a thin one, and a width pooled over sources is set by the thinnest glyph drawn, which shrank every
distance and made the score swing with the sample (a copier scored 0.107 to 0.180 on one data set
for three seeds of the check).
`reach` is the share of the true range that the generated values reach: the true range cut in
`bins` equal bins, the share of those holding true values that also hold generated ones (pooled
over sources). `noise_floor` is the same distance between two independent true samples of the
sizes used: the score a perfect generator gets from sampling alone. `copy_distance` is the
distance a generator that returns its source unchanged gets on the same sources: the score to beat.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray.data.nuisances import BACKGROUND_EPS, Nuisance
from git_ray.registry import Registry

# measurer(images (B, C, H, W) in [0, 1], clean sources (B, C, H, W) in [0, 1]) -> (B,) values
Measurer = Callable[[Tensor, Tensor], Tensor]
MEASURERS: Registry = Registry("nuisance measurer")

STROKE_LEVEL = 0.5  # a pixel above this is stroke (ink) for the dilation measurer
ROTATION_STEP_DEG = 5.0  # grid of the rotation search: 72 angles over the full circle
COVERAGE_BINS = 10


@MEASURERS.register("none")
def measure_nothing() -> None:
    """The identity nuisance has no parameter: coverage is not defined for it."""
    return None


def background_level(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B,): median of the outer one-pixel ring, averaged over channels (digits
    and characters rarely reach the border, so this is the background's level)."""
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)  # (B, C, P)
    return ring.median(dim=-1).values.mean(dim=-1)


@MEASURERS.register("background")
def build_background_measurer() -> Measurer:
    def measure(x: Tensor, clean: Tensor) -> Tensor:
        is_bg = (clean <= BACKGROUND_EPS).all(dim=1, keepdim=True).expand_as(x)  # (B, C, H, W)
        n_bg = is_bg.flatten(1).sum(1)  # (B,)
        level = (x * is_bg).flatten(1).sum(1) / n_bg.clamp_min(1)  # (B,) mean background intensity
        # A source with no background pixel at all (rare): fall back to the border median.
        return torch.where(n_bg > 0, level, background_level(x))

    return measure


@MEASURERS.register("dilation")
def build_dilation_measurer() -> Measurer:
    def measure(x: Tensor, clean: Tensor) -> Tensor:
        area = (x > STROKE_LEVEL).flatten(1).sum(1).float()  # (B,)
        clean_area = (clean > STROKE_LEVEL).flatten(1).sum(1).float().clamp_min(1)  # (B,)
        return area / clean_area

    return measure


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image of (B, C, H, W) about its centre by degrees (B,), bilinear, zero fill."""
    a = degrees * (math.pi / 180)
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@MEASURERS.register("rotation")
def build_rotation_measurer(step_deg: float = ROTATION_STEP_DEG, chunk: int = 64) -> Measurer:
    angles = torch.arange(-180.0, 180.0, step_deg)  # (A,)

    def measure(x: Tensor, clean: Tensor) -> Tensor:
        out = []
        grid = angles.to(x.device)
        for i in range(0, len(x), chunk):  # chunks bound the (b, A, C, H, W) candidates' memory
            xc, cc = x[i:i + chunk], clean[i:i + chunk]
            b, a = len(xc), len(grid)
            cand = rotate(cc.repeat_interleave(a, 0), grid.repeat(b))  # (b * A, C, H, W)
            err = (cand.view(b, a, -1) - xc.flatten(1)[:, None]).pow(2).mean(-1)  # (b, A)
            out.append(grid[err.argmin(1)])
        return torch.cat(out)

    return measure


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise 1-Wasserstein distance between empirical samples a (R, n) and b (R, m):
    the integral of |F_a - F_b| over the merged support."""
    v = torch.cat([a, b], dim=1).sort(dim=1).values  # (R, n + m)
    widths = v[:, 1:] - v[:, :-1]  # (R, n + m - 1)
    at = v[:, :-1].contiguous()
    fa = torch.searchsorted(a.sort(dim=1).values.contiguous(), at, right=True) / a.shape[1]
    fb = torch.searchsorted(b.sort(dim=1).values.contiguous(), at, right=True) / b.shape[1]
    return ((fa - fb).abs() * widths).sum(dim=1)  # (R,)


def source_distances(gen: Tensor, true: Tensor) -> Tensor:
    """(n,): each source's 1-Wasserstein distance between gen (n, K) and true (n, T), in units of
    its own true range (see the module docstring); a source whose true values are all one value
    (no ink to dilate) is measured in the pooled range."""
    lo, hi = float(true.min()), float(true.max())
    pooled = hi - lo if hi > lo else 1.0  # a nuisance of strength 0: every true value is the same
    own = true.max(dim=1).values - true.min(dim=1).values  # (n,)
    width = torch.where(own > 0, own, torch.full_like(own, pooled))
    return wasserstein_1d(gen, true) / width


def coverage_from_values(gen: Tensor, true: Tensor, true_ref: Tensor | None = None,
                         bins: int = COVERAGE_BINS) -> dict[str, float]:
    """Scores from measured values: gen (n, K) per source under K styles, true (n, T) per source
    under T true draws; true_ref (n, T'), a second independent true sample, gives the noise floor."""
    lo, hi = float(true.min()), float(true.max())
    distance = float(source_distances(gen, true).mean())
    edges = torch.linspace(lo, hi, bins + 1)[1:-1]
    # Per source: the bins its true values fill, and which of those its generated values reach
    # (a generated value outside the true range reaches no bin: it goes to an extra column).
    def filled(v: Tensor) -> Tensor:  # (n, m) values -> (n, bins) bool
        b = torch.bucketize(v.cpu().contiguous(), edges)
        b = torch.where((v.cpu() >= lo) & (v.cpu() <= hi), b, torch.full_like(b, bins))
        return F.one_hot(b, bins + 1)[..., :bins].amax(dim=1).bool()

    true_hit, gen_hit = filled(true), filled(gen)
    reach = float(((true_hit & gen_hit).sum(1) / true_hit.sum(1).clamp_min(1)).mean())
    out = {"coverage_distance": distance, "coverage_reach": reach,
           "true_low": lo, "true_high": hi,
           "generated_low": float(gen.min()), "generated_high": float(gen.max())}
    if true_ref is not None:
        out["noise_floor"] = float(source_distances(true_ref, true).mean())
    return out


class CoverageSample:
    """What a coverage score is measured on: n class-balanced training images held fixed as
    content (`src`, with their own nuisance draw), their clean sources (`clean`), the measurer,
    and the random stream every later draw comes from. `nuisance_coverage` scores a generator
    on one; `bench/coverage_breakdown.py` asks it more (styles from encoded images, the nuisance
    applied to the source, scores by the source's own reading)."""

    def __init__(self, munit: Any, data: Any, measure: Measurer, nuisance: Nuisance, *,
                 device: torch.device | str, seed: int, n: int):
        from git_ray.generative.train import BalancedSampler  # here: train imports torch.optim

        self.munit, self.measure, self.nuisance = munit, measure, nuisance
        self.device = torch.device(device)
        self.g = torch.Generator().manual_seed(seed)
        idx = BalancedSampler(data.y_train, self.g)(n)  # (n,) class-balanced sources
        self.src = data.x_train[idx].to(self.device)  # (n, C, H, W) in [0, 1], with their own nuisance draw
        self.clean = data.x_train_clean[idx].to(self.device)  # the same images before it
        with torch.no_grad():  # a measurement: nothing here needs a graph
            self.content = munit.content_encoder(self.src * 2 - 1)  # (n, D, h, w)

    @torch.no_grad()
    def translated(self, z: Tensor) -> Tensor:
        """Style codes z (n, S) -> (n,): the parameter read in each source's content under z."""
        out = ((self.munit.decode(self.content, z.to(self.device)) + 1) / 2).clamp(0, 1)  # (n, C, H, W)
        return self.measure(out.float(), self.clean).cpu()

    def random_styles(self, styles: int, style_scale: float = 1.0) -> Tensor:
        """(n, styles): under codes drawn from N(0, I) * style_scale, as GIT draws them at use."""
        n, dim = len(self.src), self.munit.style_dim
        return torch.stack([self.translated(torch.randn(n, dim, generator=self.g) * style_scale)
                            for _ in range(styles)], dim=1)

    def true_values(self, draws: int, images: Tensor | None = None) -> Tensor:
        """(n, draws): the true nuisance drawn afresh on `images` (the clean sources unless
        given), read against the clean sources."""
        clean = self.clean.repeat(draws, 1, 1, 1)  # (draws * n, C, H, W): draw-major
        rep = clean if images is None else images.repeat(draws, 1, 1, 1)
        return self.measure(self.nuisance(rep, self.g), clean).view(draws, -1).T.cpu()

    def copy_values(self) -> Tensor:
        """(n, 1): a generator that returns its source: each source's own draw, whatever the style."""
        return self.measure(self.src.float(), self.clean)[:, None].cpu()


@torch.no_grad()
def nuisance_coverage(munit: Any, data: Any, nuisance_name: str, nuisance: Nuisance, *,
                      device: torch.device | str, seed: int, n: int = 64, styles: int = 32,
                      true_draws: int = 128, style_scale: float = 1.0) -> dict[str, float] | None:
    """Coverage of a generator (module docstring); None for a nuisance with nothing to measure.

    `munit` needs `content_encoder(x)`, `decode(content, z)` and `style_dim` (images in [-1, 1]);
    `data` needs x_train, x_train_clean and y_train. Styles are N(0, I) * style_scale, as GIT
    draws them at use."""
    measure = MEASURERS.build(nuisance_name)
    if measure is None:
        return None
    sample = CoverageSample(munit, data, measure, nuisance, device=device, seed=seed, n=n)
    gen_v = sample.random_styles(styles, style_scale)  # (n, styles)
    true_v = sample.true_values(true_draws)
    ref_v = sample.true_values(styles)
    copy = coverage_from_values(sample.copy_values(), true_v)["coverage_distance"]
    return {**coverage_from_values(gen_v, true_v, ref_v), "copy_distance": copy, "n_sources": n,
            "styles": styles}
