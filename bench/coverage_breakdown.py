"""Where a generator's coverage distance comes from: its score beside reference rows, and by the
source's own nuisance reading.

    python -m bench.coverage_breakdown results/generators/6aa08a874d46/generator.pt \
        dataset.nuisance=dilation dataset.instance=0

The data are the sweep file's `base` (default sweeps/glyphs_git_cpu.yaml) with the given
overrides, as `bench.generator_sweep` builds them; give the data the generator was trained on.
Each row is the coverage distance (and reach) of `git_ray.generative.coverage`, on one sample of
class-balanced sources (`--n`, `--seed`), against the true nuisance on their clean sources:

    random styles        codes from N(0, I), as GIT draws them at use (the check's score)
    encoded, other       codes encoded from other training images (MUNIT's example-guided use)
    encoded, same clean  codes encoded from fresh true draws of each source's own clean image:
                         the styles a perfect style encoder would hand over; if this row is no
                         better than the first, the prior is not what limits the generator
    copier               the source as it is (the score to beat)
    nuisance on source   the true nuisance drawn afresh on the source, its own draw kept: what
                         adding the right variation without undoing the source's draw scores
    noise floor          fresh true draws on the clean source: a perfect generator's score

Then the sources are cut into `--bins` equal-count bins by their own reading (the copier's
value) and, per bin, the generated and true values' 10th / 50th / 90th percentiles (medians over
the bin's sources) and the bin's mean distance: a generator whose content carries the source's
own draw shows generated medians that climb with the bin while the true ones stay put.

Last, which code holds the source's own draw: how much of the sources' own readings (their
variance, as the cross-validated R^2 of a ridge regression) can be read back linearly from the
style code each source is encoded to, and from its content code. A generator that has learned
the nuisance reads it into its style almost fully (the glyphs study's background generators:
0.93-0.95; their content codes keep 0.33-0.43 of it too, yet their coverage says the decoders
take the level from the style); the dilation generators' styles read 0.26-0.33 of the draw
while their content codes hold 0.40-0.47.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.common import add_coverage_args, print_coverage_rows, sweep_base
from git_ray.config import ConfigError
from git_ray.data import build_dataset
from git_ray.generative import load_generator
from git_ray.generative.coverage import MEASURERS, CoverageSample, source_distances
from git_ray.registry import NUISANCES

QUANTILES = (0.1, 0.5, 0.9)
RIDGE_ALPHAS = np.logspace(-2, 5, 15)  # chosen inside each training fold (RidgeCV's own leave-one-out)


def reference_rows(sample: CoverageSample, styles: int, true_draws: int, x_train: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The measured values (n, k) of each row of the module docstring, and the true values they
    are scored against (n, true_draws)."""
    munit, n = sample.munit, len(sample.src)
    rows = {"random styles": sample.random_styles(styles)}
    other = torch.randint(0, len(x_train), (styles, n), generator=sample.g)
    rows["encoded, other"] = torch.stack(
        [sample.translated(munit.style_encoder(x_train[i].to(sample.device) * 2 - 1)) for i in other], 1)
    rows["encoded, same clean"] = torch.stack(
        [sample.translated(munit.style_encoder(sample.nuisance(sample.clean, sample.g) * 2 - 1))
         for _ in range(styles)], 1)
    rows["copier"] = sample.copy_values()
    rows["nuisance on source"] = sample.true_values(styles, images=sample.src)
    rows["noise floor"] = sample.true_values(styles)
    return rows, sample.true_values(true_draws)


def by_source_bins(gen: torch.Tensor, true: torch.Tensor, own: torch.Tensor, bins: int) -> list[dict[str, object]]:
    """Sources cut into `bins` equal-count bins by their own reading `own` (n,): per bin its
    reading's range, size, generated and true percentiles and mean distance."""
    dist = source_distances(gen, true)  # (n,)
    q = torch.tensor(QUANTILES)
    order = own.argsort()
    out = []
    for part in order.tensor_split(bins):
        out.append({"own_low": float(own[part].min()), "own_high": float(own[part].max()), "n": len(part),
                    "generated": gen[part].quantile(q, dim=1).median(dim=1).values.tolist(),
                    "true": true[part].quantile(q, dim=1).median(dim=1).values.tolist(),
                    "distance": float(dist[part].mean())})
    return out


@torch.no_grad()
def code_readings(sample: CoverageSample, folds: int = 5) -> dict[str, float]:
    """{"style": R^2, "content": R^2}: how much of the sources' own readings a ridge regression
    reads back from each source's style code and from its (flattened) content code, on held-out
    folds (out-of-fold predictions; 0 = no better than the mean, 1 = exact)."""
    own = sample.copy_values()[:, 0].double().numpy()  # (n,)
    codes = {"style": sample.munit.style_encoder(sample.src * 2 - 1), "content": sample.content.flatten(1)}
    out = {}
    for name, code in codes.items():
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        pred = cross_val_predict(reg, code.double().cpu().numpy(), own, cv=KFold(folds, shuffle=True, random_state=0))
        out[name] = float(1 - ((pred - own) ** 2).sum() / ((own - own.mean()) ** 2).sum())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", help="a generator.pt (as `git-ray generator` prints its place)")
    add_coverage_args(p, n_help="sources (more than the check's 64, for the bins)")
    p.add_argument("--bins", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # bad input: say what, before any work
        cfg = sweep_base(args.sweep, args.overrides)
        measure = MEASURERS.build(cfg.dataset.nuisance)
        if measure is None:
            raise ConfigError(f"dataset.nuisance {cfg.dataset.nuisance!r} has no parameter to measure; "
                              f"give one of {sorted(k for k in MEASURERS.names() if k != 'none')}")
        if args.n < args.bins or args.bins < 1:
            raise ConfigError(f"--n {args.n} --bins {args.bins}: need 1 <= bins <= n")
        try:
            munit = load_generator(args.generator)
        except Exception as err:  # noqa: BLE001 - missing, not a torch file, not a generator: one answer
            raise ConfigError(f"{args.generator}: cannot load a generator from it ({err})")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    data = build_dataset(cfg.dataset)
    if munit.spec["in_channels"] != data.x_train.shape[1] or munit.spec["image_size"] != data.x_train.shape[-1]:
        print(f"error: {args.generator} was trained on {munit.spec['in_channels']}-channel "
              f"{munit.spec['image_size']} px images; these data are {data.x_train.shape[1]}-channel "
              f"{data.x_train.shape[-1]} px: give the overrides of the data it was trained on", file=sys.stderr)
        sys.exit(2)
    nuisance = NUISANCES.build(cfg.dataset.nuisance, strength=cfg.dataset.nuisance_strength)
    with torch.no_grad():
        sample = CoverageSample(munit, data, measure, nuisance, device="cpu", seed=args.seed, n=args.n)
        rows, true = reference_rows(sample, args.styles, args.true_draws, data.x_train)
    print(f"{args.generator} on {cfg.dataset.nuisance} ({' '.join(args.overrides) or 'the base'}): "
          f"{args.n} sources, {args.styles} styles, seed {args.seed}")
    print_coverage_rows(rows, true, width=20)
    print(f"  by the source's own reading ({args.bins} bins; percentiles {QUANTILES}, medians over the bin)")
    print(f"  {'own reading':>13s} {'n':>4s}  {'generated':>18s}  {'true':>18s}  {'distance':>8s}")
    for b in by_source_bins(rows["random styles"], true, rows["copier"][:, 0], args.bins):
        gen = " ".join(f"{v:5.2f}" for v in b["generated"])
        tru = " ".join(f"{v:5.2f}" for v in b["true"])
        print(f"  {b['own_low']:6.2f}-{b['own_high']:<6.2f} {b['n']:4d}  {gen:>18s}  {tru:>18s}  {b['distance']:8.3f}")
    print("  the source's own reading read back from its codes (ridge, 5-fold R^2)")
    for name, r2 in code_readings(sample).items():
        print(f"  {name + ' code':20s} {r2:8.3f}")


if __name__ == "__main__":
    main()
