"""MUNIT training speed: steps per second at the paper's K49 size and at the quickstart size.

    python -m bench.bench_generator [--device cpu|cuda] [--steps N] [--threads T]

Prints the machine (CPU model, torch, CUDA device if any), then for each size the steady-state
training steps per second (after warm-up steps, which pay for kernel selection and lazy imports)
and what the configured number of steps would take. Uses CUDA when available unless told not to.
Data are random images of the right shape: speed does not depend on their content.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import cpu_model
from git_ray.config import GeneratorConfig
from git_ray.generative.train import train_munit
from git_ray.sweep.spec import load_sweep

QUICKSTART = Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml"


def sizes() -> list[tuple[str, int, int, GeneratorConfig]]:
    """(name, image size, channels, generator config): the paper's K49 setting, and the
    quickstart's as its sweep file sets it today (read, so that this bench never goes stale)."""
    from git_ray.data import build_dataset

    spec = load_sweep(QUICKSTART)
    quick = spec.trial_config(spec.grid_points()[0])
    data = build_dataset(quick.dataset)  # the embedded digits: its image size and channels
    return [("paper K49 (METHOD.md)", 28, 1, GeneratorConfig(steps=10_000, batch_size=1, dim=64, n_res=4,
                                                              mlp_dim=256)),
            (f"quickstart ({quick.dataset.source} {data.image_size} px)", data.image_size, data.channels,
             quick.generator)]


@dataclass
class RandomData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    channels: int
    image_size: int
    fingerprint: str = "bench"


def steps_per_second(gcfg: GeneratorConfig, size: int, channels: int, *, device: torch.device,
                     steps: int, warmup: int) -> float:
    g = torch.Generator().manual_seed(0)
    data = RandomData(torch.rand(500, channels, size, size, generator=g), torch.arange(500) % 10, channels, size)
    stamps: dict[int, float] = {}

    def stamp(step: int, losses: dict) -> None:
        if step in (warmup, warmup + steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps[step] = time.perf_counter()

    cfg = gcfg.model_copy(update={"steps": warmup + steps})
    train_munit(data, cfg, device=device, callback=stamp, log=lambda m: None)
    return steps / (stamps[warmup + steps] - stamps[warmup])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per size (default: 30 CPU, 200 CUDA)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps or (200 if device.type == "cuda" else 30)
    print(f"machine: {cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"device:  {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    for name, size, channels, gcfg in sizes():
        rate = steps_per_second(gcfg, size, channels, device=device, steps=steps, warmup=args.warmup)
        print(f"{name}: {size}x{size}x{channels}, dim {gcfg.dim}, n_res {gcfg.n_res}, batch {gcfg.batch_size}: "
              f"{rate:.1f} steps/s -> {gcfg.steps} steps in {gcfg.steps / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
