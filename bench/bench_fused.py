"""Fused trials: classifier images/s of G members trained as one stacked network, against
separate processes, and the K49 study projected on the best path.

    python -m bench.bench_fused [--device cuda] [--groups 1,4,16,64] [--epochs 2]
                                [--images N] [--width 16] [--arch resnet20] [--batch 128]
                                [--compile none,default,reduce-overhead] [--compile-group 16]
                                [--stacking auto|grouped|members]
                                [--separate] [--share-json GPU_SHARE.json | --gen-total STEPS_PER_S]
                                [--json OUT.json]

Each member is a K49-size trial by default: ResNet-20 (width 16) on K49-LT's 7,832 training
images (28x28x1, 49 classes, synthetic: speed does not depend on content), batch 128, its own
data tensors, seed and method, cycling through the K49 study's methods (ERM, RS, DRS, oracle:
git_ray's real losses, samplers and oracle nuisance). The timed path is the training loop itself
(`git_ray.train.loop.train_members`: data, augmentation, forward, losses, backward, per-member
SGD, the on-device NaN check, per-epoch validation on 10 images a class); the figure is the mean
of the epochs after the first (the first pays cuDNN autotuning and compilation).

- fused: images/s in total for each G in --groups (G = 1 is the ordinary trial).
- --separate (default on CPU): the same G members each trained alone in a fresh process, one
  after another with the same threads: G x images over the sum of their timed epochs; the
  ratio fused / separate is what fusing buys (>= 1: no slower).
- --compile: the same at G = --compile-group with torch.compile (mode per item; "none" = eager).
- projection: the K49 study of bench_gpu_share (360 classifiers, 60 generators, eKLD) with the
  classifiers at the best fused rate. Generator, evaluation and eKLD rates come from a
  `bench_gpu_share --json` file (--share-json), else are measured here (a short run).
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

import git_ray.balance  # noqa: F401  (registers losses, samplers, class weights)
import git_ray.data  # noqa: F401  (registers nuisances)
import git_ray.models  # noqa: F401  (registers archs)
from bench.bench_gpu_share import EKLD_PAIRS, K49_CLASSES, k49_lt_size, project_k49
from bench.common import default_device, each_alone, machine_line, print_figures, save_figures, set_threads
from git_ray.config import trial_config
from git_ray.registry import ARCHS
from git_ray.train.fused import stack_classifiers
from git_ray.train.loop import Member, place_model, train_members

# The K49 study's methods (sweeps/k49_invariance.yaml's @method axis), cycled over the members.
METHODS = (
    {"balance": {"loss": "ce", "sampler": "none"}},
    {"balance": {"loss": "ce", "sampler": "resample"}},
    {"balance": {"loss": "ce", "sampler": "drs"}},
    {"balance": {"loss": "ce", "sampler": "none"}, "augment": {"oracle": True}},
)


def member_config(i: int, args: argparse.Namespace):
    method = METHODS[i % len(METHODS)]
    return trial_config({
        "dataset": {"nuisance": "rotation"}, "model": {"arch": args.arch, "width": args.width},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "lr": 0.1, "warmup_epochs": 1,
                  "s1": args.epochs, "s2": args.epochs, "amp": True},
        "eval": {"val_per_class": 10}, "seed": i, **method})


def member_data(i: int, images: int, device: torch.device) -> SimpleNamespace:
    """A LongTailData-shaped namespace of K49-shaped synthetic images for member i."""
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.rand(images, 1, 28, 28, generator=g)
    y = torch.randint(0, K49_CLASSES, (images,), generator=g)
    x_val = torch.rand(K49_CLASSES * 10, 1, 28, 28, generator=g)
    y_val = torch.arange(K49_CLASSES).repeat_interleave(10)
    return SimpleNamespace(
        x_train=x.to(device), y_train=y.to(device), x_train_clean=x.to(device), x_val=x_val.to(device),
        y_val=y_val.to(device), class_counts=torch.bincount(y, minlength=K49_CLASSES).to(device),
        num_classes=K49_CLASSES, channels=1, image_size=28)


def fused_rate(members: list[int], args: argparse.Namespace, device: torch.device,
               compile_mode: str | None = None) -> dict[str, float]:
    """Train the members (indices) together; images/s over the epochs after the first."""
    cfgs = [member_config(i, args) for i in members]
    models = []
    for i, cfg in zip(members, cfgs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(i)
            models.append(place_model(ARCHS.build(cfg.model.arch, in_channels=1, num_classes=K49_CLASSES,
                                                  width=cfg.model.width, head=cfg.head, image_size=28), device))
    grouped = {"auto": None, "grouped": True, "members": False}[args.stacking]
    net = models[0] if len(models) == 1 else place_model(stack_classifiers(models, grouped=grouped), device)
    data = [member_data(i, args.images, device) for i in members]
    start = time.perf_counter()
    runs = train_members(net, [Member(c, d) for c, d in zip(cfgs, data)], device=device, compile_mode=compile_mode)
    wall = time.perf_counter() - start
    timed = [row["seconds"] for row in runs[0].rows[1:]] or [runs[0].rows[0]["seconds"]]
    per_epoch = len(members) * (args.images // args.batch) * args.batch  # images in full batches
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {"images_per_s": per_epoch / (sum(timed) / len(timed)), "first_epoch_s": runs[0].rows[0]["seconds"],
            "wall_s": wall, "peak_mem_gib": peak}


def separate_rate(members: list[int], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Each member alone in a fresh process, one after another: G x images over the summed
    time of their timed epochs (and the wall time with process start, for reference)."""
    per_member = (args.images // args.batch) * args.batch
    results, wall = each_alone(fused_rate, members, args, device)
    seconds = sum(per_member / r["images_per_s"] for r in results)
    return {"images_per_s": len(members) * per_member / seconds, "wall_s": wall}


def shared_rates(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Generator, evaluation and eKLD rates for the projection: from a bench_gpu_share JSON,
    else measured here at small sizes."""
    if args.share_json:
        with open(args.share_json) as f:
            figs = json.load(f)["figures"]
        return {k: figs[k] for k in ("generator.best_total_steps_per_s", "eval.eval_images_per_s",
                                     "eval.ekld_seconds", "eval.ekld_pairs") if k in figs} | \
            ({"git.images_per_s": figs["git.images_per_s"]} if "git.images_per_s" in figs else {})
    from bench.bench_gpu_share import _generator_worker, eval_rates, packed

    ev = {f"eval.{k}": v for k, v in eval_rates(device).items()}
    if args.gen_total:  # given: generators were measured elsewhere (say where when reporting it)
        return {"generator.best_total_steps_per_s": args.gen_total, **ev}
    steps = 30 if device.type == "cuda" else 2
    gen = packed(_generator_worker, 1, device, args.images, steps, 5 if device.type == "cuda" else 1,
                 dim=64 if device.type == "cuda" else 8)
    return {"generator.best_total_steps_per_s": gen["total"], **ev}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--groups", default=None, help="group sizes G (default: 1,4,16,64 on CUDA, 1,4 on CPU)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is not timed)")
    ap.add_argument("--images", type=int, default=None, help="training images per member (default: K49-LT's)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--stacking", choices=("auto", "grouped", "members"), default="auto",
                    help="grouped convolutions or the members' own networks in turn (auto: grouped on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave)")
    ap.add_argument("--separate", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the members alone in separate processes (default: on CPU)")
    ap.add_argument("--compile", default="", help="torch.compile modes to compare at --compile-group, "
                                                  "e.g. none,default,reduce-overhead")
    ap.add_argument("--compile-group", type=int, default=16)
    ap.add_argument("--share-json", default=None, help="a `bench_gpu_share --json` file for the projection")
    ap.add_argument("--gen-total", type=float, default=None,
                    help="MUNIT steps/s in total for the projection, when not from --share-json "
                         "(default: one process measured here)")
    ap.add_argument("--no-projection", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures and the machine to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return its figures."""
    args = parse(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.images = args.images or k49_lt_size()
    groups = [int(g) for g in (args.groups or ("1,4,16,64" if cuda else "1,4")).split(",")]
    separate = (not cuda) if args.separate is None else args.separate
    print(f"== fused trials ({machine_line(device)})")
    print(f"   {args.arch} width {args.width} on {args.images:,} images x 28x28x1 per member, batch {args.batch}, "
          f"{args.epochs} epochs (first untimed), device {device}")
    out: dict[str, float] = {}

    # from a file: read now, and the projection follows every figure
    shared = shared_rates(args, device) if args.share_json and not args.no_projection else None

    def save() -> None:  # after every figure: a run cut short by a time limit keeps what it measured
        measured = [v for k, v in out.items() if k.endswith(".images_per_s") and not k.startswith("separate.")]
        if measured:
            out["best_images_per_s"] = max(measured)
            if shared is not None:
                project(out, shared)
        if args.json:
            save_figures(args.json, device, argv, out)

    for g in groups:
        r = fused_rate(list(range(g)), args, device)
        out.update({f"fused.g{g}.{k}": v for k, v in r.items()})
        print(f"   G={g}: {r['images_per_s']:,.0f} images/s in total", flush=True)
        if separate and g > 1:
            s = separate_rate(list(range(g)), args, device)
            out.update({f"separate.g{g}.{k}": v for k, v in s.items()})
            out[f"fused_vs_separate.g{g}"] = r["images_per_s"] / s["images_per_s"]
        save()
    for mode in [m for m in args.compile.split(",") if m]:
        try:
            r = fused_rate(list(range(args.compile_group)), args, device, compile_mode=None if mode == "none" else mode)
        except Exception as err:  # noqa: BLE001  (a compiler failure is a finding, not the end of the bench)
            print(f"   compile {mode} G={args.compile_group}: FAILED {type(err).__name__}: {str(err)[:300]}",
                  flush=True)
            out[f"compile.{mode}.g{args.compile_group}.failed"] = 1.0
            continue
        out.update({f"compile.{mode}.g{args.compile_group}.{k}": v for k, v in r.items()})
        print(f"   compile {mode} G={args.compile_group}: {r['images_per_s']:,.0f} images/s "
              f"(first epoch {r['first_epoch_s']:.1f} s)", flush=True)
        save()
    if not args.no_projection and shared is None:
        shared = shared_rates(args, device)
    save()
    print_figures("fused classifiers (images/s in total; ratio fused / separate processes)",
                  {k: v for k, v in out.items() if k.startswith(("fused", "separate", "compile", "best"))})
    if not args.no_projection:
        print_figures(f"projected K49 study, classifiers fused ({'GPU' if cuda else 'CPU: not meaningful'})",
                      {k: v for k, v in out.items() if k.startswith(("k49_study.", "input."))})
    return out


def project(out: dict[str, float], shared: dict[str, float]) -> None:
    """The K49 study's GPU-hours with the classifiers at the best fused rate so far, into `out`."""
    ekld_s = shared["eval.ekld_seconds"] * EKLD_PAIRS / shared["eval.ekld_pairs"]
    proj = project_k49(out["best_images_per_s"], shared["eval.eval_images_per_s"], ekld_s,
                       shared["generator.best_total_steps_per_s"], shared.get("git.images_per_s"), k49_lt_size())
    out.update({f"k49_study.{k}": v for k, v in proj.items()})
    out.update({f"input.{k}": v for k, v in shared.items()})


if __name__ == "__main__":
    main()
