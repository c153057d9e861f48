"""Fused generators: MUNIT steps/s of G generators trained together in one process, against
separate processes.

    python -m bench.bench_fused_generators [--device cuda] [--groups 1,4,16,64] [--steps N] [--warmup N]
                                           [--dim 64] [--n-res 4] [--batch 1] [--images N]
                                           [--stacking auto|stacked|members] [--conv grouped|matmul]
                                           [--[no-]cuda-graph] [--autocast bf16]
                                           [--separate] [--json OUT.json]

Each member is a K49-size generator by default (the paper's MUNIT: dim 64, 4 residual blocks,
style 8, MLP 256, batch 1, on K49-LT's 7,832 training images, 28x28x1, 49 classes; synthetic
images: speed does not depend on content), with its own data tensor, sampler and seed. The timed
path is `git_ray.generative.fused.train_munits` (each member's draws, the stacked `munit_step`,
the on-device finite-loss check), over `--steps` steps after `--warmup` untimed ones.

- fused: member-steps/s in total for each G in --groups (G = 1 is one generator alone);
  `--stacking auto` stacks on CUDA and runs members one after another on a CPU (what a sweep
  does); `stacked` / `members` force either. `--conv` is how a stack computes its convolutions
  (`git_ray.generative.fused.CONVS`: vmapped grouped convolutions, or unfold + batched matmul);
  `--cuda-graph` / `--no-cuda-graph` whether each stacked step is replayed as one CUDA graph
  (both default to what training does: matmul and graphs on CUDA, where training also lets
  float32 matrix products use TF32, as cuDNN's convolutions do by default). `--autocast bf16`
  runs the steps under bf16 autocast: not an option of the training code, what it would buy.
- --separate (default on CPU): the same G members each trained alone in a fresh process, one
  after another with the same threads: G x steps over the sum of their timed spans; the ratio
  fused / separate is what fusing buys (>= 1: no slower).
`best_steps_per_s` (the best fused total) is what `bench_gpu_share --gen-fused-json` puts into
the K49 study's projection.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from types import SimpleNamespace

import torch

from bench.bench_gpu_share import K49_CLASSES, k49_lt_size
from bench.common import default_device, each_alone, machine_line, print_figures, save_figures, set_threads, sync
from git_ray.config import GeneratorConfig
from git_ray.generative.fused import CONVS, train_munits


def member_data(i: int, images: int) -> SimpleNamespace:
    """What MUNIT training reads of a LongTailData, K49-shaped and synthetic, for member i."""
    g = torch.Generator().manual_seed(2000 + i)
    return SimpleNamespace(x_train=torch.rand(images, 1, 28, 28, generator=g),
                           y_train=torch.randint(0, K49_CLASSES, (images,), generator=g), channels=1,
                           image_size=28, fingerprint=f"bench{i}")


def fused_rate(members: list[int], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Train the members (indices) together; member-steps/s in total over the timed steps."""
    gcfg = GeneratorConfig(steps=args.warmup + args.steps, batch_size=args.batch, dim=args.dim, n_res=args.n_res,
                           mlp_dim=args.mlp_dim, checkpoint_every=10**9)
    jobs = [(member_data(i, args.images), gcfg.model_copy(update={"seed": i}), None) for i in members]
    spans: list[float] = []
    begun: list[float] = []

    def stamp(step: int, losses: dict) -> None:
        # A stack calls this once per step for all its members; members in turn once per member step.
        if step == args.warmup:
            sync(device)
            begun.append(time.perf_counter())
        elif step == args.warmup + args.steps:
            sync(device)
            spans.append(time.perf_counter() - begun[-1])

    stacked = {"auto": None, "stacked": True, "members": False}[args.stacking]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.autocast == "bf16"
           else contextlib.nullcontext())
    start = time.perf_counter()
    with amp:
        out = train_munits(jobs, device=device, stacked=stacked, conv=args.conv, cuda_graph=args.cuda_graph,
                           callback=stamp, log=lambda m: None)
    wall = time.perf_counter() - start
    failed = [o for o in out if isinstance(o, Exception)]
    if failed:
        raise failed[0]
    member_steps = len(members) * args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"steps_per_s": member_steps / sum(spans), "wall_s": wall, "peak_mem_gib": peak}


def separate_rate(members: list[int], args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Each member alone in a fresh process, one after another: G x steps over the summed timed
    spans (and the wall time with process start, for reference)."""
    results, wall = each_alone(fused_rate, members, args, device)
    seconds = sum(args.steps / r["steps_per_s"] for r in results)
    return {"steps_per_s": len(members) * args.steps / seconds, "wall_s": wall}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--groups", default=None, help="group sizes G (default: 1,4,16,64 on CUDA, 1,4 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on CUDA, 20 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 2 on CPU)")
    ap.add_argument("--dim", type=int, default=None, help="MUNIT width (default: the paper's 64 on CUDA, 8 on CPU)")
    ap.add_argument("--n-res", type=int, default=None, help="residual blocks (default: 4 on CUDA, 1 on CPU)")
    ap.add_argument("--mlp-dim", type=int, default=None, help="style MLP width (default: 256 on CUDA, 32 on CPU)")
    ap.add_argument("--batch", type=int, default=1, help="images per domain per step (the paper's 1)")
    ap.add_argument("--images", type=int, default=None, help="training images per member (default: K49-LT's)")
    ap.add_argument("--stacking", choices=("auto", "stacked", "members"), default="auto",
                    help="one stacked model, or the members one after another (auto: stacked on CUDA)")
    ap.add_argument("--conv", choices=CONVS, default=None,
                    help="how a stack computes its convolutions (default: the training code's, matmul on CUDA)")
    ap.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                    help="replay each stacked step as one CUDA graph (default: the training code's, on CUDA)")
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none", help="run the steps under autocast")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave)")
    ap.add_argument("--separate", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the members alone in separate processes (default: on CPU)")
    ap.add_argument("--json", default=None, help="also write the figures and the machine to this file")
    args = ap.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    for key, gpu, cpu in (("steps", 30, 20), ("warmup", 5, 2), ("dim", 64, 8), ("n_res", 4, 1), ("mlp_dim", 256, 32)):
        if getattr(args, key) is None:
            setattr(args, key, gpu if cuda else cpu)
    args.images = args.images or k49_lt_size()
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return its figures."""
    args = parse(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    groups = [int(g) for g in (args.groups or ("1,4,16,64" if cuda else "1,4")).split(",")]
    separate = (not cuda) if args.separate is None else args.separate
    print(f"== fused generators ({machine_line(device)})")
    print(f"   MUNIT dim {args.dim}, {args.n_res} residual blocks, MLP {args.mlp_dim}, batch {args.batch}, on "
          f"{args.images:,} images x 28x28x1 per member; {args.steps} timed steps after {args.warmup}; "
          f"stacking {args.stacking}, conv {args.conv or 'as training does'}, autocast {args.autocast}, "
          f"CUDA graph {'as training does' if args.cuda_graph is None else args.cuda_graph}; device {device}")
    out: dict[str, float] = {}
    for g in groups:
        r = fused_rate(list(range(g)), args, device)
        out.update({f"fused.g{g}.{k}": v for k, v in r.items()})
        print(f"   G={g}: {r['steps_per_s']:,.1f} generator steps/s in total", flush=True)
        if separate and g > 1:
            s = separate_rate(list(range(g)), args, device)
            out.update({f"separate.g{g}.{k}": v for k, v in s.items()})
            out[f"fused_vs_separate.g{g}"] = r["steps_per_s"] / s["steps_per_s"]
        out["best_steps_per_s"] = max(v for k, v in out.items()
                                      if k.startswith("fused.") and k.endswith(".steps_per_s"))
        if args.json:  # after every figure: a run cut short by a time limit keeps what it measured
            save_figures(args.json, device, argv, out)
    print_figures("fused generators (member-steps/s in total; ratio fused / separate processes)", out)
    return out


if __name__ == "__main__":
    main()
