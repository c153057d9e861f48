"""How close to the true dilation can a generator that sees only its source get?

    python -m bench.dilation_bound dataset.instance=0 --epochs 20 --width 64

Coverage compares a generator's translations of a source with the nuisance drawn afresh on that
source's clean glyph. But a source already carries one draw, and a bold glyph looks like a
dilated thin one: to centre its translations where the nuisance centres them, a generator must
first read which draw its source carries, from the source alone. This bench measures how well
that can be read and what the best generator reading that well would score:

1. A reader CNN (the quality check's judge network, `--width` wide) learns the offset of the
   draw (stroke width in pixels, -1 for a 2x2 erosion to +3 for a 4x4 dilation) from `--draws`
   fresh true draws on each of `--reader-glyphs` clean test glyphs (other renderings of the
   same classes; the generator never sees them, the reader may: it stands for the best reading
   the data allow, not for what a generator learns).
2. On class-balanced training images (their own draw, as the data hold it), the
   ideal generator outputs the clean glyph at offset (source's offset + new draw - read offset),
   with the read offset sampled from the reader's posterior (row "reader posterior") or its
   most likely class ("reader MAP"). It is ideal in everything else: it knows the clean glyph
   once it has read the draw (real undoing of a dilation loses detail) and draws the new
   offset from the nuisance's own distribution. Its score is about the best a generator whose
   reading is no better than this reader's can do.

Offsets add: squares add under Minkowski sums, so a 2x2 dilation of a 3x3 dilation is a 4x4
one; mixing erosion and dilation is treated the same way (the idealisation above). Every row is
`git_ray.generative.coverage`'s distance, in each source's own range, against the true nuisance
on the clean glyph; "copier" and "nuisance on source" come out as the coverage breakdown
(`bench.coverage_breakdown`) measures them on real images, which checks the arithmetic.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.common import add_coverage_args, sweep_base
from git_ray.config import ConfigError
from git_ray.data import build_dataset
from git_ray.data.nuisances import Dilation, _morph
from git_ray.generative.coverage import MEASURERS, coverage_from_values
from git_ray.generative.quality import train_judge
from git_ray.generative.train import BalancedSampler

LADDER = (-5, 7)  # offsets the ideal generator can land on: source + new - read, each in [-1, 3]


def offset_prior(strength: float) -> dict[int, float]:
    """{offset: probability} of `Dilation` at `strength`: k x k dilation adds k - 1 px of stroke,
    k x k erosion takes k - 1 (a 1x1 erosion is the image as it is)."""
    prior: dict[int, float] = {0: 1 - strength}
    for k in Dilation.DILATE_K:
        prior[k - 1] = prior.get(k - 1, 0.0) + strength * Dilation.P_DILATE / len(Dilation.DILATE_K)
    for k in Dilation.ERODE_K:
        prior[1 - k] = prior.get(1 - k, 0.0) + strength * (1 - Dilation.P_DILATE) / len(Dilation.ERODE_K)
    return dict(sorted((o, p) for o, p in prior.items() if p > 0))


def at_offset(x: Tensor, offset: int) -> Tensor:
    """(B, C, H, W) glyphs with offset px more (or fewer) of stroke: a square dilation or erosion."""
    return _morph(x, offset + 1, True) if offset >= 0 else _morph(x, 1 - offset, False)


def own_offsets(src: Tensor, clean: Tensor, offsets: list[int]) -> Tensor:
    """(n,) index into `offsets` of the draw each source carries (the nearest of its clean glyph's
    versions; exact for images the nuisance made)."""
    err = torch.stack([(src - at_offset(clean, o)).abs().flatten(1).sum(1) for o in offsets], 1)  # (n, K)
    return err.argmin(1)


def offset_ladder(clean: Tensor, measure) -> Tensor:
    """(n, LADDER span): the dilation measurer's reading of each clean glyph at every offset."""
    return torch.stack([measure(at_offset(clean, o), clean) for o in range(LADDER[0], LADDER[1] + 1)], 1)


def train_reader(clean: Tensor, offsets: list[int], probs: Tensor, *, draws: int, epochs: int,
                 width: int, g: torch.Generator) -> torch.nn.Module:
    """The reader: the judge network trained on `draws` true draws on each of `clean` to name
    the draw's offset (class index into `offsets`)."""
    xs, ys = [], []
    for _ in range(draws):
        o = torch.multinomial(probs, len(clean), replacement=True, generator=g)  # (n,) index
        img = torch.empty_like(clean)
        for i, off in enumerate(offsets):
            img[o == i] = at_offset(clean[o == i], off)
        xs.append(img)
        ys.append(o)
    return train_judge(torch.cat(xs), torch.cat(ys), len(offsets), epochs=epochs, seed=0,
                       device=torch.device("cpu"), width=width)


def ideal_rows(ladder: Tensor, own: Tensor, post: Tensor, offsets: list[int], probs: Tensor, *,
               styles: int, true_draws: int, g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """Values (n, k) of each row of the module docstring and the true values (n, true_draws).
    own (n,) the sources' own draws and post (n, K) a reader's posterior, both over `offsets`."""
    n, offs = len(own), torch.tensor(offsets)

    def read(o: Tensor) -> Tensor:  # offsets (n, k) -> the measurer's readings
        return ladder.gather(1, o - LADDER[0])

    def drawn(k: int) -> Tensor:  # (n, k) fresh offsets from the nuisance
        return offs[torch.multinomial(probs, n * k, replacement=True, generator=g).view(n, k)]

    true = read(drawn(true_draws))
    src = offs[own][:, None]  # (n, 1)
    rows = {
        "copier": read(src),
        "nuisance on source": read(src + drawn(styles)),
        "no reading": read(src + drawn(styles) - drawn(styles)),
        "reader posterior": read(src + drawn(styles) - offs[torch.multinomial(post, styles, replacement=True, generator=g)]),
        "reader MAP": read(src + drawn(styles) - offs[post.argmax(1)][:, None]),
        "noise floor": read(drawn(styles)),
    }
    return rows, true


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_coverage_args(p, n_help="training images scored as sources")
    p.add_argument("--epochs", type=int, default=10, help="the reader's training epochs")
    p.add_argument("--width", type=int, default=64, help="the reader's width (the judge's is 32)")
    p.add_argument("--reader-glyphs", type=int, default=20000, help="clean test glyphs the reader learns from")
    p.add_argument("--draws", type=int, default=1, help="true draws per clean glyph the reader learns from")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # bad input: say what, before any work
        cfg = sweep_base(args.sweep, ["dataset.nuisance=dilation", *args.overrides])
        if cfg.dataset.nuisance != "dilation":
            raise ConfigError(f"dataset.nuisance={cfg.dataset.nuisance}: this bench measures dilation only")
        if min(args.epochs, args.width, args.reader_glyphs, args.draws, args.n, args.styles, args.true_draws) < 1:
            raise ConfigError("--epochs, --width, --reader-glyphs, --draws, --n, --styles and --true-draws "
                              "must be at least 1")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    data = build_dataset(cfg.dataset)
    prior = offset_prior(cfg.dataset.nuisance_strength)
    offsets, probs = list(prior), torch.tensor(list(prior.values()))
    measure = MEASURERS.build("dilation")
    g = torch.Generator().manual_seed(args.seed)
    learn = torch.randperm(len(data.x_test_clean), generator=g)[:args.reader_glyphs]
    reader = train_reader(data.x_test_clean[learn], offsets, probs, draws=args.draws, epochs=args.epochs,
                          width=args.width, g=g)
    sel = BalancedSampler(data.y_train, g)(args.n)
    src, clean = data.x_train[sel], data.x_train_clean[sel]
    own = own_offsets(src, clean, offsets)
    with torch.no_grad():
        post = F.softmax(reader(src), dim=1)  # (n, K)
    rows, true = ideal_rows(offset_ladder(clean, measure), own, post, offsets, probs, styles=args.styles,
                            true_draws=args.true_draws, g=g)
    acc = float((post.argmax(1) == own).float().mean())
    print(f"dilation ({' '.join(args.overrides) or 'the base'}): reader {args.width} wide, {args.epochs} epochs, "
          f"{args.draws} draw(s) on each of {len(learn)} clean test glyphs; {args.n} training images as sources")
    print(f"  reader accuracy on the sources' own draws (offsets {offsets}): {acc:.3f}")
    print(f"  {'row':20s} {'distance':>8s}")
    for name, values in rows.items():
        print(f"  {name:20s} {coverage_from_values(values, true)['coverage_distance']:8.3f}")


if __name__ == "__main__":
    main()
