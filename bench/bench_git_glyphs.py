"""GIT at full size on one GPU: a paper-size MUNIT on Glyphs-BG-LT / Glyphs-DIL-LT, its quality
check (label agreement, nuisance coverage), and CE+DRS against CE+DRS+GIT on the same data.

    python -m bench.bench_git_glyphs --device cuda                   # ~4 minutes on one H100
    python -m bench.bench_git_glyphs --device cuda --nuisance dilation --steps 3000 --epochs 30   # longer

No Ray: the generator comes from `git_ray.generative.get_generator` (trained into a temporary
cache, quality check included) and the trials from `git_ray.trial.run_trial`, which finds it
there. Prints one table: the generator's numbers, then tail eKLD, few-class and balanced accuracy
with and without GIT, with the seconds each took and the device.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from git_ray.config import load_trial_config
from git_ray.data import build_dataset
from git_ray.generative import get_generator, quality_line, read_generator_meta
from git_ray.trial import run_trial


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/glyphs_git.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--nuisance", default="background", choices=["background", "dilation"])
    p.add_argument("--steps", type=int, default=2000, help="MUNIT steps (the paper: 10000 at batch 1)")
    p.add_argument("--epochs", type=int, default=20, help="classifier epochs (s1, s2 at 60%%, 80%%)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    e = args.epochs
    overrides = [f"dataset.nuisance={args.nuisance}", f"generator.steps={args.steps}",
                 f"train.epochs={e}", f"train.s1={int(0.6 * e)}", f"train.s2={int(0.8 * e)}",
                 f"train.warmup_epochs={max(1, e // 10)}", f"seed={args.seed}", "eval.val_per_class=100"]
    cache = tempfile.mkdtemp(prefix="git_ray_bench_gen_")
    cfg = load_trial_config(args.config, overrides + [f"generator.cache={cache}"])
    dev = torch.device(args.device)
    data = build_dataset(cfg.dataset).to(dev)

    t0 = time.perf_counter()
    get_generator(data, cfg.generator, cache=cache, device=dev, log=lambda m: print(f"  {m}", flush=True))
    gen_s = time.perf_counter() - t0
    quality = read_generator_meta(data, cfg.generator, cache=cache)["quality"]
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"\nglyphs {args.nuisance}, {len(data.y_train)} training images, device {device_name}")
    print(f"generator ({cfg.generator.steps} steps, dim {cfg.generator.dim}, n_res {cfg.generator.n_res}, "
          f"batch {cfg.generator.batch_size}): {gen_s:.0f} s with its quality check")
    print(f"  {quality_line(quality)}")

    rows = []
    for git in (False, True):
        c = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"git": git})})
        t = time.perf_counter()
        r = run_trial(c, device=dev).trial
        rows.append((git, r["ekld_tail"], r["ekld_head"], r["few_accuracy"], r["balanced_accuracy"],
                     time.perf_counter() - t))
    print("\n| CE+DRS | tail eKLD | head eKLD | few acc | balanced acc | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for git, tail, head, few, bal, s in rows:
        print(f"| {'+ GIT' if git else 'no GIT'} | {tail:.4f} | {head:.4f} | {few:.3f} | {bal:.3f} | {s:.0f} |")


if __name__ == "__main__":
    main()
