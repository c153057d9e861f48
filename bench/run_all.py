"""Every benchmark in one run (`make bench` = `python -m bench.run_all`), then a summary against
the targets, all headed by the machine the figures were measured on.

    python -m bench.run_all [--quick | --full] [--device cpu|cuda] [--only ekld,train_step,...]
                            [--json FIGURES.json]

Benches: ekld (batched eKLD vs the per-image PIL path), train_step (plain / oracle / GIT steps
and the data pipeline's share), generator (MUNIT steps/s, bench/bench_generator.py), sweep (Ray
Tune wall time vs ideal, overhead per trial; CPU, local Ray) and, when CUDA is there, gpu_share
(trials packed on one GPU, projected GPU-hours of the K49 study). Default sizes keep the whole
run to about 10 minutes on 2 CPU cores; --quick is a smoke run (a minute or two); --full uses
the paper's estimator sizes (meant for a GPU machine).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
import traceback
from typing import Callable

import torch

from bench.common import default_device, fmt, machine, machine_line

BENCHES = ("ekld", "train_step", "generator", "sweep", "gpu_share")


def sizes(mode: str, device: str) -> dict[str, list[str]]:
    """Command-line arguments of each bench for a run mode: quick, default or full."""
    cuda = device.startswith("cuda")
    dev = ["--device", device]
    if mode == "quick":
        return {
            "ekld": dev + ["--images-per-class", "2", "--draws", "4", "--no-diagnostics"],
            "train_step": dev + ["--archs", "resnet20", "--steps", "1", "--warmup", "1", "--loader-batches", "1"],
            "generator": ["--device", device, "--steps", "2", "--warmup", "1"],
            "sweep": ["--trials", "2", "--epochs", "3"],
            "gpu_share": dev + ["--procs", "1,2", "--gen-procs", "1,2", "--steps", "20", "--gen-steps", "10",
                                "--git-steps", "4"],
        }
    if mode == "full":
        return {
            "ekld": dev + ["--images-per-class", "40", "--draws", "100"] + ([] if cuda else ["--threads", "0"]),
            "train_step": dev,
            "generator": ["--device", device],
            "sweep": ["--trials", "12"],
            "gpu_share": dev,
        }
    return {
        "ekld": dev + (["--images-per-class", "40", "--draws", "100"] if cuda else []),
        "train_step": dev,
        "generator": ["--device", device] + ([] if cuda else ["--steps", "5", "--warmup", "2"]),
        "sweep": ["--trials", "6"],
        "gpu_share": dev,
    }


def parse_generator_output(text: str) -> dict[str, float]:
    """bench_generator prints 'NAME: ...: R steps/s -> ...' per size; its main returns nothing."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([^:(]+?)\s*(?:\([^)]*\))?: .*?([0-9.]+) steps/s", line)
        if m:
            name = re.sub(r"[^a-z0-9]+", "_", m.group(1).lower()).strip("_")
            out[f"{name}.steps_per_s"] = float(m.group(2))
    return out


def run_generator(argv: list[str]) -> dict[str, float]:
    from bench import bench_generator

    old = sys.argv
    sys.argv = ["bench.bench_generator", *argv]
    buf = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, s: str) -> int:
            buf.write(s)
            return sys.__stdout__.write(s)

    try:
        print("== generator: MUNIT training steps/s (bench/bench_generator.py)")
        with contextlib.redirect_stdout(Tee()):
            bench_generator.main()
    finally:
        sys.argv = old
    return parse_generator_output(buf.getvalue())


def runners() -> dict[str, Callable[[list[str]], dict[str, float]]]:
    from bench import bench_ekld, bench_gpu_share, bench_sweep, bench_train_step

    return {"ekld": bench_ekld.main, "train_step": bench_train_step.main, "generator": run_generator,
            "sweep": bench_sweep.main, "gpu_share": bench_gpu_share.main}


# Targets of issue 6: (figure pattern, comparison, bound, where it applies)
TARGETS = [
    (r"^ekld\.(\w+)\.draw_speedup$", ">=", 20.0, "cpu"),
    (r"^sweep\.wall_over_ideal$", "<=", 1.1, "any"),
    (r"^sweep\.overhead_per_trial_s$", "<", 2.0, "any"),
]


def summary(figures: dict[str, float], device: str) -> list[str]:
    """One line per target: the figure, the bound, met or missed (and by how much)."""
    lines = []
    for pattern, op, bound, where in TARGETS:
        if where == "cpu" and device.startswith("cuda"):
            continue
        for key, value in sorted(figures.items()):
            if not re.match(pattern, key):
                continue
            ok = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
            if ok:
                how = "met"
            elif op == ">=":
                how = f"MISSED: {bound / max(value, 1e-12):.1f}x short of it"
            else:
                how = f"MISSED: {value / bound:.2f}x the bound"
            lines.append(f"  {key:<44s} {fmt(value):>10s}  target {op} {bound:g}: {how}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="smoke sizes (a minute or two)")
    group.add_argument("--full", action="store_true", help="the paper's sizes (for a GPU machine)")
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHES)}")
    ap.add_argument("--json", default=None, help="also write every figure and the machine to this JSON file")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    chosen = args.only.split(",") if args.only else [b for b in BENCHES if b != "gpu_share" or torch.cuda.is_available()]
    print(f"git_ray benchmarks ({mode} sizes) on {machine_line(args.device)}")
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S')}; figures are ratios measured side by side in one run\n")
    figures: dict[str, float] = {}
    failed: list[str] = []
    argvs, run = sizes(mode, args.device), runners()
    for name in chosen:
        start = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            figs = run[name](argvs[name])
            figures.update({f"{name}.{k}": float(v) for k, v in figs.items()})
        except Exception:  # one broken bench must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        torch.set_num_threads(threads)  # a bench may pin its own thread count
        print(f"   ({name}: {time.perf_counter() - start:.0f} s)\n")
    print(f"== summary against the targets ({machine_line(args.device)})")
    for line in summary(figures, args.device):
        print(line)
    if failed:
        print(f"  FAILED benches: {', '.join(failed)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), "mode": mode, "figures": figures, "failed": failed}, f, indent=1)
    return figures


if __name__ == "__main__":
    main()
