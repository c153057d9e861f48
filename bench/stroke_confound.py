"""How well can a generator that learns its style without being told the nuisance cover dilation?

    python -m bench.stroke_confound [--n 400] [--styles 32] [overrides ...]

The glyphs pool's own renderings vary in stroke width (each master is drawn at one of the
`stroke_kernels`, eroded or dilated at 4x the size, and in regular and bold faces), and that
width is as independent of the class as the dilation nuisance drawn on top of it. Coverage
scores a translation against the nuisance drawn afresh on the source's clean rendering: the
rendering's width must be kept and only the draw replaced. A generator that learns "what varies
independently of the class" as its style, as MUNIT's losses ask, has no term that tells the two
widths apart. This bench scores ideal generators of that kind on class-balanced pool training
images, each source being its clean rendering with one true draw:

  copier                each source's own reading (a generator that returns its source)
  stroke as style       the source's face, glyph and affine, re-rendered from the master of a
                        stroke kernel drawn as the pool draws them, then a fresh true draw: a
                        perfect generator whose style is all of the stroke width
  all but glyph as style   a master of the source's class drawn as the pool draws them (any
                        face, any stroke) under a fresh affine, then a fresh draw: a perfect
                        generator whose style is everything but the class
  noise floor           fresh true draws on the clean rendering (a perfect generator)

It re-renders the pool from its recipe (`git_ray.data.glyphs.render_recipe`: the same images,
pixel for pixel) rather than loading it. Every row is `git_ray.generative.coverage`'s distance
in each source's own range; "stroke as style" is also broken down by the source's own kernel.
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor

from bench.common import add_coverage_args, print_coverage_rows, sweep_base
from git_ray.config import ConfigError
from git_ray.data import glyphs
from git_ray.data.nuisances import Dilation
from git_ray.generative.coverage import MEASURERS, coverage_from_values
from git_ray.generative.train import BalancedSampler


class Pool:
    """The training split's recipe: masters (M, 1, W, W), per class their indices, and each
    image's master index (N,) and affine (N, 2, 3); `image(index, theta)` renders in [0, 1]."""

    def __init__(self, per_class_images: int, params: glyphs.RenderParams = glyphs.RenderParams()):
        self.params = params
        self.masters, self.per_class = glyphs.render_masters(params)
        self.index, self.theta = glyphs.render_recipe(self.per_class, per_class_images, params,
                                                      glyphs.split_generator("train"))
        self.labels = torch.arange(len(self.per_class)).repeat_interleave(per_class_images)  # (N,)
        self.kernels = len(params.stroke_kernels)
        self.drawings = len(self.masters) // self.kernels  # masters are kernel-major

    def image(self, index: Tensor, theta: Tensor) -> Tensor:  # (n,), (n, 2, 3) -> (n, 1, S, S)
        return glyphs.warp(self.masters, index, theta, self.params).unsqueeze(1).float() / 255.0

    def kernel_of(self, index: Tensor) -> Tensor:
        return index // self.drawings

    def restroked(self, index: Tensor, g: torch.Generator, kernels: list[int] | None = None) -> Tensor:
        """The same drawings at kernels drawn uniformly from `kernels` (positions in the params'
        stroke_kernels; None: all of them, as every class's masters are picked)."""
        choice = torch.tensor(kernels if kernels is not None else range(self.kernels))
        k = choice[torch.randint(len(choice), index.shape, generator=g)]
        return k * self.drawings + index % self.drawings

    def any_master(self, labels: Tensor, g: torch.Generator) -> Tensor:
        """A master of each label's class, uniformly (the pool's own pick)."""
        counts = torch.tensor([len(p) for p in self.per_class])[labels]
        pick = (torch.rand(len(labels), generator=g) * counts).long().clamp_max(counts - 1)
        return torch.stack([torch.tensor(self.per_class[c][i]) for c, i in zip(labels.tolist(), pick.tolist())])


def confound_rows(pool: Pool, sel: Tensor, nuisance: Dilation, *, styles: int, true_draws: int,
                  g: torch.Generator, kernels: list[int] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Values (n, k) of each row of the module docstring for the pool images `sel` (n,), and
    the true values (n, true_draws); "stroke as style" draws its kernels from `kernels`
    (positions in stroke_kernels; None: all, as the pool does)."""
    measure = MEASURERS.build("dilation")
    index, theta, labels = pool.index[sel], pool.theta[sel], pool.labels[sel]
    clean = pool.image(index, theta)  # (n, 1, S, S)

    def read(images: Tensor) -> Tensor:  # (n, ...) -> (n,): a fresh true draw on each, read against clean
        return measure(nuisance(images, g), clean)

    true = torch.stack([read(clean) for _ in range(true_draws)], 1)
    rows = {
        "copier": read(clean)[:, None],
        "stroke as style": torch.stack([read(pool.image(pool.restroked(index, g, kernels), theta))
                                        for _ in range(styles)], 1),
        "all but glyph as style": torch.stack([read(pool.image(pool.any_master(labels, g),
                                                               glyphs.draw_affines(len(sel), pool.params, g)))
                                               for _ in range(styles)], 1),
        "noise floor": torch.stack([read(clean) for _ in range(styles)], 1),
    }
    return rows, true


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_coverage_args(p, n_help="pool training images scored as sources")
    p.add_argument("--per-class", type=int, default=glyphs.TRAIN_PER_CLASS,
                   help="training images a class in the pool (the study's pool: the default)")
    p.add_argument("--kernels", type=int, nargs="+", default=None, metavar="K",
                   help="stroke kernels (of the pool's %s) that \"stroke as style\" draws from; default: all, "
                        "as the pool does; e.g. --kernels 1 3: a generator that draws one width "
                        "whatever its source" % (glyphs.RenderParams().stroke_kernels,))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # bad input: say what, before any work
        cfg = sweep_base(args.sweep, ["dataset.nuisance=dilation", *args.overrides])
        if cfg.dataset.nuisance != "dilation" or cfg.dataset.source != "glyphs":
            raise ConfigError(f"dataset.source={cfg.dataset.source}, dataset.nuisance={cfg.dataset.nuisance}: "
                              "this bench measures dilation on glyphs only")
        if min(args.per_class, args.n, args.styles, args.true_draws) < 1:
            raise ConfigError("--per-class, --n, --styles and --true-draws must be at least 1")
        sizes = list(glyphs.RenderParams().stroke_kernels)
        wrong = [k for k in args.kernels or [] if k not in sizes]
        if wrong:
            raise ConfigError(f"--kernels {wrong}: the pool's stroke kernels are {sizes}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    pool = Pool(args.per_class)
    g = torch.Generator().manual_seed(args.seed)
    sel = BalancedSampler(pool.labels, g)(args.n)
    nuisance = Dilation(strength=cfg.dataset.nuisance_strength)
    kernels = None if args.kernels is None else sorted({sizes.index(k) for k in args.kernels})
    rows, true = confound_rows(pool, sel, nuisance, styles=args.styles, true_draws=args.true_draws, g=g,
                               kernels=kernels)
    print(f"dilation on the glyphs pool (strength {cfg.dataset.nuisance_strength}): {args.n} training images "
          f"as sources, {args.styles} styles, {args.true_draws} true draws, seed {args.seed}; stroke as style "
          f"draws kernels {args.kernels or sizes}")
    print_coverage_rows(rows, true, width=24)
    kernel = pool.kernel_of(pool.index[sel])
    for k, size in enumerate(pool.params.stroke_kernels):
        mine = kernel == k
        if mine.any():
            d = coverage_from_values(rows["stroke as style"][mine], true[mine])["coverage_distance"]
            print(f"  stroke as style, sources of stroke kernel {size:+d} (n={int(mine.sum())}): {d:.3f}")


if __name__ == "__main__":
    main()
