"""Shared pieces of the benchmarks: the machine line, timers, synthetic images, a usable random
model, and the paper code's per-image nuisance path (numpy -> PIL -> transform -> tensor).

Every bench prints ratios measured side by side in one run; absolute times depend on the machine
and on how busy it is, so `machine()` also records the load average when the bench started.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from git_ray.config import ConfigError, TrialConfig, apply_overrides, trial_config
from git_ray.registry import ARCHS

if TYPE_CHECKING:  # Pillow only for the per-image reference path: the GPU benches run without it
    from PIL import Image

# ---------------------------------------------------------------------------------------------
# The generator benches' data: a sweep file's base


def sweep_base(path: str, overrides: list[str]) -> TrialConfig:
    """The trial config of sweep file `path`'s `base` with dotted overrides; ConfigError naming
    the file and the overrides if either is wrong."""
    from git_ray.sweep.spec import read_sweep_file  # its `extends` resolved, as `git-ray sweep` reads it

    sweep = read_sweep_file(path)
    if not isinstance(sweep.get("base"), dict):
        raise ConfigError(f"{path}: needs a `base` trial config (see sweeps/glyphs_git_cpu.yaml)")
    return trial_config(apply_overrides(sweep["base"], overrides), where=f"{path} base with {overrides}")


def add_coverage_args(p: argparse.ArgumentParser, n_help: str) -> None:
    """The arguments of the coverage benches: the data (a sweep file's base, overrides), the
    sample (sources, styles, true draws, seed) and torch's CPU threads."""
    p.add_argument("--sweep", default="sweeps/glyphs_git_cpu.yaml", help="sweep file whose base is used")
    p.add_argument("--n", type=int, default=400, help=n_help)
    p.add_argument("--styles", type=int, default=32)
    p.add_argument("--true-draws", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base")


def print_coverage_rows(rows: dict[str, Tensor], true: Tensor, width: int) -> None:
    """A coverage bench's table: each row's distance and reach against the true values (n, T)."""
    from git_ray.generative.coverage import coverage_from_values

    print(f"  {'row':{width}s} {'distance':>8s} {'reach':>6s}")
    for name, values in rows.items():
        s = coverage_from_values(values, true)
        print(f"  {name:{width}s} {s['coverage_distance']:8.3f} {s['coverage_reach']:6.3f}")


# ---------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str | None = None) -> dict[str, str | int | float]:
    """What the figures were measured on: CPU, cores, threads, load, torch, CUDA device."""
    info: dict[str, str | int | float] = {
        "cpu": cpu_model(), "cores": os.cpu_count() or 0, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    try:
        info["load_1min"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on Linux
        pass
    if torch.cuda.is_available():
        dev = torch.device(device) if device is not None and torch.device(device).type == "cuda" else torch.device("cuda")
        info["cuda"] = torch.cuda.get_device_name(dev)
    return info


def save_figures(path: str, device: torch.device | str, argv: list[str] | None, figures: dict) -> None:
    """A bench's figures as JSON, with the machine they ran on (kept under docs/ for GPU runs)."""
    import json

    with open(path, "w") as f:
        json.dump({"machine": machine(device), "argv": argv, "figures": figures}, f, indent=1)


def machine_line(device: torch.device | str | None = None) -> str:
    m = machine(device)
    line = (f"machine: {m['cpu']} ({m['cores']} cores, load {m.get('load_1min', '?')}), "
            f"torch {m['torch']}, {m['torch_threads']} CPU threads")
    return line + (f", CUDA {m['cuda']}" if "cuda" in m else ", no CUDA")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates the wall time of the blocks it wraps, synchronising the device around each
    (so on CUDA the time is the work's, not the launch's)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1


def timed(fn: Callable, watch: Stopwatch) -> Callable:
    """`fn` with every call timed by `watch`."""

    def wrapper(*args, **kwargs):
        with watch():
            return fn(*args, **kwargs)

    return wrapper


def fmt(x: float, digits: int = 3) -> str:
    """A figure for a table: 3 significant digits, thousands separated, nan as '-'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def print_figures(title: str, figures: dict[str, float], keys: list[str] | None = None) -> None:
    print(f"  {title}")
    for k in keys or figures:
        print(f"    {k:<50s} {fmt(figures[k])}")


# ---------------------------------------------------------------------------------------------
# Synthetic images: K49-like strokes, so nuisances and class differences behave as on real data


def stroke_images(num_classes: int, per_class: int, size: int, channels: int = 1,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) or (N, H, W, 3) of 3 jittered strokes per class on a zero
    background (what the background nuisance needs), labels (N,) int64, class-major order.

    Each class has its own stroke layout (and, with 3 channels, colour): a random network
    answers differently per class, so per-class eKLD varies across classes as on real data.
    """
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    labels = np.repeat(np.arange(num_classes), per_class)
    ends = rng.uniform(0.15, 0.85, (num_classes, 3, 2, 2)) * size  # (K, stroke, end, yx)
    pts = ends[labels] + rng.normal(0.0, 0.04 * size, (n, 3, 2, 2))  # (N, 3, 2, 2) jittered
    width = rng.uniform(0.04, 0.07, (n, 1, 1)) * size  # (N, 1, 1) stroke half-width in pixels
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    grid = np.stack([yy, xx], -1).reshape(1, 1, -1, 2)  # (1, 1, P, 2)
    a, b = pts[:, :, 0:1, :], pts[:, :, 1:2, :]  # (N, 3, 1, 2)
    ab = b - a
    t = np.clip(((grid - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)  # (N, 3, P)
    dist = np.linalg.norm(grid - (a + t[..., None] * ab), axis=-1).min(1)  # (N, P)
    ink = np.clip(1.5 * (1.0 - dist / width.reshape(n, 1)), 0.0, 1.0)  # 0 off the strokes
    img = (ink * 255).round().astype(np.uint8).reshape(n, size, size)
    if channels == 3:
        colour = rng.uniform(0.4, 1.0, (num_classes, 3))[labels]  # (N, 3)
        img = (img[..., None] * colour[:, None, None, :]).round().astype(np.uint8)
    return img, labels.astype(np.int64)


def to_float(images: np.ndarray) -> Tensor:
    """uint8 (N, H, W[, 3]) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(images).float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()


def calibrated_model(arch: str, x: Tensor, num_classes: int, *, device: torch.device,
                     seed: int = 0, logit_std: float = 3.0) -> nn.Module:
    """A random-weight classifier whose outputs look like a trained one's: BatchNorm statistics
    measured on `x` (already normalised), head scaled so logits spread by about `logit_std`.
    Without this a random net's BN (mean 0, var 1 defaults) and small head give near-uniform
    softmaxes and eKLD values near zero."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHS.build(arch, in_channels=x.shape[1], num_classes=num_classes, width=16,
                            head="linear", image_size=x.shape[-1])
    model = model.to(device)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for chunk in x.split(256):
            model(chunk.to(device))
        model.eval()
        logits = model(x[:512].to(device))  # (B, K)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        scale = logit_std / float(logits.std().clamp_min(1e-6))
        head.weight.mul_(scale)
        head.bias.mul_(scale)
    return model


# ---------------------------------------------------------------------------------------------
# The paper code's pattern: one image at a time through PIL


def _shift(img: Image.Image, dy: int, dx: int, fill: int) -> Image.Image:
    """img moved down by dy and right by dx, the uncovered border filled with `fill`."""
    from PIL import Image

    out = Image.new(img.mode, img.size, (fill,) * len(img.getbands()) if len(img.getbands()) > 1 else fill)
    out.paste(img, (dx, dy))
    return out


def pil_morph(img: Image.Image, k: int, dilate: bool) -> Image.Image:
    """Grey dilation / erosion with a k x k square, per image with PIL. PIL's rank filters take
    odd sizes only, so an even k is a (k-1) square filter plus a 2x2 max/min of shifted copies
    (squares add under Minkowski sum); the 2x2 window covers the pixel and the one above / left,
    which puts an even window k // 2 before the pixel, as OpenCV's anchor (and git_ray's) does."""
    from PIL import ImageChops, ImageFilter

    if k == 1:
        return img
    rank = ImageFilter.MaxFilter if dilate else ImageFilter.MinFilter
    if k % 2 == 1:
        return img.filter(rank(k))
    if k > 2:
        img = img.filter(rank(k - 1))
    pick = ImageChops.lighter if dilate else ImageChops.darker
    fill = 0 if dilate else 255  # the border never wins, as in git_ray's -inf / +inf padding
    return pick(pick(img, _shift(img, 1, 0, fill)), pick(_shift(img, 0, 1, fill), _shift(img, 1, 1, fill)))


def pil_nuisance(name: str, strength: float = 1.0) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    """The per-image version of a git_ray nuisance, as the paper's code applies it: PIL rotate
    (bicubic), a numpy background mask, PIL Max/MinFilter for stroke width."""
    from PIL import Image

    if name == "none":
        return lambda img, rng: img
    if name == "rotation":
        def rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
            angle = rng.uniform(-180.0 * strength, 180.0 * strength)
            return img.rotate(angle, resample=Image.BICUBIC)
        return rotate
    if name == "background":
        top = int(round(99 * strength))

        def background(img: Image.Image, rng: np.random.Generator) -> Image.Image:
            a = np.array(img)  # (H, W) or (H, W, 3) uint8
            bg = a == 0 if a.ndim == 2 else (a == 0).all(-1)
            a[bg] = rng.integers(0, top + 1)
            return Image.fromarray(a)
        return background
    if name == "dilation":
        def dilation(img: Image.Image, rng: np.random.Generator) -> Image.Image:
            if rng.random() >= strength:
                return img
            if rng.random() < 0.6:
                return pil_morph(img, int(rng.choice((2, 3, 4))), True)
            return pil_morph(img, int(rng.choice((1, 2))), False)
        return dilation
    raise ValueError(f"no per-image version of nuisance {name!r}")


# ---------------------------------------------------------------------------------------------
# Profiles: where the time goes


def torch_profile(fn: Callable[[], object], top: int = 12, device: torch.device | None = None) -> str:
    """torch.profiler table of `fn()`'s operators, the `top` largest by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device is not None and device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        fn()
        if device is not None:
            sync(device)
    key = "self_cuda_time_total" if device is not None and device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=48)


def cprofile(fn: Callable[[], object], top: int = 15) -> str:
    """cProfile's `top` entries of `fn()` by cumulative time."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    try:
        fn()
    finally:
        pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Each member alone in a fresh process (the "separate processes" side of the fused benches)


def _alone(rate_fn: Callable, i: int, args_dict: dict, device_name: str, threads: int, queue) -> None:
    import argparse

    torch.set_num_threads(threads)
    queue.put(rate_fn([i], argparse.Namespace(**args_dict), torch.device(device_name)))


def each_alone(rate_fn: Callable, members: list[int], args, device: torch.device) -> tuple[list[dict], float]:
    """`rate_fn([i], args, device)` (a module-level function, so that it pickles) for each member i
    in a fresh spawned process, one after another, as separate trials would run: each process's
    figures, and the wall seconds in all including process start."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results, wall = [], 0.0
    for i in members:
        queue = ctx.Queue()
        start = time.perf_counter()
        p = ctx.Process(target=_alone, args=(rate_fn, i, vars(args), str(device), torch.get_num_threads(), queue))
        p.start()
        results.append(queue.get(timeout=1800))
        p.join()
        wall += time.perf_counter() - start
    return results, wall
