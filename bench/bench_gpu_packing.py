"""GPU packing through Ray Tune: trials with resources gpu: 1 (one at a time on one GPU) against
gpu: 0.25 (four at once), timed end to end through git_ray's own `run_sweep`.

Prints (and writes to --out as JSON) for each setting: the sweep's wall time, each trial's
`train_seconds` from the results table, how many trials Ray ran at once (from trial start/end
times seen by a Tune callback) and how many processes held GPU memory at once (nvidia-smi).

    python -m bench.bench_gpu_packing --source k49 --epochs 50 --runs 1:1,0.25:4,1:4 --out packing.json

`--source k49` writes K49-size synthetic npz files (a blob per class plus noise, 49 x 5,000 train / 49 x 800
test, 28x28) so the run needs no download; the cost per trial depends on the sizes, not the pixels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np


def synthetic_k49(root: Path, per_class_train: int = 5000, per_class_test: int = 800) -> None:
    """Official-format K49 npz files of the real data's size (uint8 (N, 28, 28), labels 0..48)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    # A class-dependent blob plus noise (the same blobs in both splits): learnable.
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(6, 22, size=(49, 2))
    blobs = np.exp(-((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2) / 20.0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        y = np.repeat(np.arange(49, dtype=np.uint8), n)
        rng.shuffle(y)
        x = (blobs[y] * 200 + rng.integers(0, 55, size=(len(y), 28, 28))).clip(0, 255).astype(np.uint8)
        np.savez(root / f"k49-{split}-imgs.npz", arr_0=x)
        np.savez(root / f"k49-{split}-labels.npz", arr_0=y)


class GpuSampler(threading.Thread):
    """Polls nvidia-smi: the most processes seen holding GPU memory at once, and their memory."""

    def __init__(self, period: float = 0.5):
        super().__init__(daemon=True)
        self.period, self.stop_flag = period, threading.Event()
        self.max_procs, self.max_mib = 0, 0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=10).stdout
                rows = [r.split(",") for r in out.strip().splitlines() if r.strip()]
                self.max_procs = max(self.max_procs, len(rows))
                self.max_mib = max([self.max_mib] + [int(r[1]) for r in rows if r[1].strip().isdigit()])
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(self.period)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", choices=["k49", "digits"], default="k49")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--runs", default="1:1,1:4,0.25:4",
                    help="comma-separated GPU_SHARE:TRIALS settings, run in this order")
    ap.add_argument("--cpus-per-trial", type=float, default=2)
    ap.add_argument("--work", default="/tmp/git_ray_packing")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from ray import tune

    from git_ray.results import read_tables
    from git_ray.sweep.runner import run_sweep
    from git_ray.sweep.spec import SweepSpec

    work = Path(args.work)
    if args.source == "k49":
        synthetic_k49(work / "k49")
        dataset = {"source": "k49", "root": str(work / "k49"), "nuisance": "rotation", "profile": "zipf",
                   "zipf_alpha": 2.0, "max_per_class": 4800, "min_per_class": 5, "val_fraction": 0.2}
        model = {"arch": "resnet20", "width": 16}
        evalc = {"ekld_images_per_class": 40, "ekld_draws": 100}
    else:
        dataset = {"source": "digits", "nuisance": "background", "imbalance_ratio": 10}
        model = {"arch": "small_cnn", "width": 8}
        evalc = {"ekld_images_per_class": 10, "ekld_draws": 10}
    e = args.epochs
    base = {"dataset": dataset, "model": model, "eval": evalc,
            "train": {"epochs": e, "batch_size": 128, "lr": 0.1, "warmup_epochs": min(5, e // 5),
                      "s1": int(e * 0.6), "s2": int(e * 0.8)}}

    report: dict = {"source": args.source, "epochs": e, "runs": []}
    for setting in args.runs.split(","):
        frac, n_trials = float(setting.split(":")[0]), int(setting.split(":")[1])
        spans: dict[str, list[float]] = {}

        class Spans(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                spans[trial.trial_id] = [time.time(), time.time()]

            def on_trial_complete(self, iteration, trials, trial, **info):
                spans[trial.trial_id][1] = time.time()

        name = f"pack_{args.source}_gpu{str(frac).replace('.', '_')}_x{n_trials}"
        spec = SweepSpec.model_validate({
            "name": name, "storage": str(work / "results"), "max_concurrent_trials": n_trials,
            "resources_per_trial": {"cpu": args.cpus_per_trial, "gpu": frac}, "verbose": 0,
            "base": base, "grid": {"seed": list(range(n_trials))}})
        sampler = GpuSampler()
        sampler.start()
        start = time.perf_counter()
        counts = run_sweep(spec, extra_callbacks=[Spans()])
        wall = time.perf_counter() - start
        sampler.stop_flag.set()
        sampler.join()
        trials = read_tables(spec.root, ["trials"])["trials"]
        run = {"gpu_per_trial": frac, "counts": counts, "wall_s": round(wall, 1),
               "trial_seconds": sorted(round(float(s), 1) for s in trials["train_seconds"]),
               "devices": sorted(set(trials["device"])),
               "max_trials_at_once": max_overlap([tuple(v) for v in spans.values()]),
               "max_gpu_processes_at_once": sampler.max_procs, "max_gpu_process_mib": sampler.max_mib,
               "balanced_accuracy": sorted(round(float(a), 3) for a in trials["balanced_accuracy"])}
        run["trials_per_hour"] = round(3600 * len(trials) / wall, 1)
        print(json.dumps(run), flush=True)
        report["runs"].append(run)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    main()
