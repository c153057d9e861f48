"""One GIT generator setting on one data setting: train it, score it, print one JSON line.

    python -m bench.generator_sweep --sweep sweeps/glyphs_git_cpu.yaml \
        dataset.nuisance=dilation dataset.instance=1 generator.n_res=2 generator.dim=16

The data and generator are the sweep file's `base` with the given overrides (dotted keys, as
`git-ray train` takes them); nothing is cached. Prints one JSON line: the overrides, coverage
distance and reach, the distance a copier scores (the number to beat), label agreement, judge accuracy, whether `quality_check` passed, the
generator's training seconds (wall, torch threads as set by --threads, default 1) and the load
average when training started, so rows measured on a shared machine can be read for what they are.
This is how the README's "GIT generators" table is measured.

`--score-at 2000,4000` also scores the generator at those steps on its way to `generator.steps`
(one JSON line each, with `step`; one judge serves every score, so later lines cost only the
translations): how a setting's coverage and agreement move with training, from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from bench.common import sweep_base
from git_ray.config import ConfigError
from git_ray.data import build_dataset
from git_ray.generative.quality import fit_judge, quality_check
from git_ray.generative.train import MunitRun, train_steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="sweeps/glyphs_git_cpu.yaml", help="sweep file whose base is used")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-at", default="", metavar="STEPS",
                   help="comma-separated steps before the last at which to score too (one line each)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:  # a bad sweep file or override: say which, before any work
        cfg = sweep_base(args.sweep, args.overrides)
        try:
            score_at = sorted({int(v) for v in args.score_at.split(",") if v.strip()})
        except ValueError:
            raise ConfigError(f"--score-at {args.score_at}: give whole steps separated by commas, e.g. 2000,4000")
        if any(not 0 < v < cfg.generator.steps for v in score_at):
            raise ConfigError(f"--score-at {args.score_at}: each step must be between 1 and generator.steps - 1 "
                              f"({cfg.generator.steps - 1}); the last step is always scored")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    dev = torch.device(args.device)
    data = build_dataset(cfg.dataset).to(dev)
    judge = fit_judge(data, device=dev, seed=cfg.generator.seed)

    load = os.getloadavg()[0]
    run = MunitRun(data, cfg.generator, device=dev, log=lambda m: None)
    run.munit.train()
    run.dis.train()
    trained_s = 0.0
    t0 = time.perf_counter()

    def score(step: int) -> None:  # training time excludes the scoring
        nonlocal trained_s, t0
        trained_s += time.perf_counter() - t0
        q = quality_check(run.munit, data, device=dev, seed=cfg.generator.seed, judge=judge)
        run.munit.train()
        print(json.dumps({
            "overrides": args.overrides, "step": step, "coverage": round(q["coverage_distance"], 4),
            "reach": round(q["coverage_reach"], 3), "copy": round(q["coverage_copy_distance"], 4),
            "agreement": round(q["label_agreement"], 4), "judge": round(q["judge_accuracy"], 4),
            "passed": q["passed"], "train_s": round(trained_s, 1), "threads": args.threads,
            "load_at_start": round(load, 2), "device": str(dev)}), flush=True)
        t0 = time.perf_counter()

    (error,) = train_steps(run, cfg.generator, log=lambda m: None,
                           callback=lambda step, losses: score(step) if step in score_at else None)
    if error is not None:
        raise error
    score(cfg.generator.steps)


if __name__ == "__main__":
    main()
