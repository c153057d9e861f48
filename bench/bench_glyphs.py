"""The glyphs source: how long the pool takes to build and to load, and (--sanity) how well a
ResNet-20 learns it.

    python -m bench.bench_glyphs [--repeats 3]                    # cold build and cached load
    python -m bench.bench_glyphs --sanity [--device cuda] [--per-class 4800] [--epochs 30]
    python -m bench.bench_glyphs --pictures docs/img              # the README's two pictures

Timing: the whole pool (49 x (6,000 + 700) = 328,300 images) is rendered into a fresh temporary
cache folder (cold: fonts drawn, masters made, every image warped, the .npz written), then loaded
from it `--repeats` times (cached). Both wall and CPU seconds are printed: on a busy machine the
wall time mostly measures the wait for a core. Targets: cold < 15 s on one core, cached < 1 s.

Sanity (--sanity): `git_ray.trial.run_trial` on the balanced pool (profile none, `--per-class`
training images a class after the 20% validation split, no nuisance), ResNet-20, the paper's
schedule shortened to `--epochs`; prints test accuracy and balanced accuracy. The full-size run
(4,800 a class, 30 epochs) is meant for a GPU; CPU runs use --per-class 300 --epochs 8 or so.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
import time

import torch

from bench.common import machine_line
from git_ray.data import glyphs


def time_build(repeats: int) -> dict[str, float]:
    """Seconds (wall, cpu) of one cold build and the best of `repeats` cached loads."""
    with tempfile.TemporaryDirectory() as folder:
        glyphs.render_masters.cache_clear()  # cold: nothing drawn yet in this process
        w, c = time.perf_counter(), time.process_time()
        arrays = glyphs.load_pool(folder)
        cold_wall, cold_cpu = time.perf_counter() - w, time.process_time() - c
        n = sum(len(arrays[k]) for k in ("y_train", "y_test"))
        size = sum(os.path.getsize(p) for p in Path(folder, "glyphs").glob("*.npz"))
        del arrays
        loads = []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            glyphs.load_pool(folder)
            loads.append((time.perf_counter() - w, time.process_time() - c))
    best_wall, best_cpu = min(loads)
    return {"images": n, "file_mb": size / 2**20, "cold_wall_s": cold_wall, "cold_cpu_s": cold_cpu,
            "cached_wall_s": best_wall, "cached_cpu_s": best_cpu}


def sanity(device: str, per_class: int, epochs: int, seed: int) -> dict[str, float]:
    """Train ResNet-20 on the balanced glyph pool; test accuracy and balanced accuracy."""
    from git_ray.config import trial_config
    from git_ray.trial import run_trial

    s1, s2 = max(1, int(epochs * 0.6)), max(1, int(epochs * 0.8))  # the paper's 30/40 of 50
    cfg = trial_config({
        "dataset": {"source": "glyphs", "nuisance": "none", "profile": "none", "max_per_class": per_class,
                    "val_fraction": 0.2},
        "model": {"arch": "resnet20", "width": 16},
        "train": {"epochs": epochs, "batch_size": 128, "lr": 0.1, "warmup_epochs": min(5, epochs // 5),
                  "s1": s1, "s2": s2, "device": "cuda" if device.startswith("cuda") else "cpu"},
        "balance": {"loss": "ce", "sampler": "none"},
        "eval": {"ekld_images_per_class": 4, "ekld_draws": 4, "val_per_class": 20},
        "seed": seed,
    }, "bench_glyphs")
    start = time.perf_counter()
    result = run_trial(cfg, device=device, log=lambda msg: print(f"  {msg}", flush=True))
    row = result.trial
    return {"accuracy": float(row["accuracy"]), "balanced_accuracy": float(row["balanced_accuracy"]),
            "seconds": time.perf_counter() - start}


def pictures(folder: str, per_class: int = 6, scale: int = 2) -> list[str]:
    """The README's pictures: glyphs_classes.png (every class, `per_class` renderings, 7 classes
    a row) and glyphs_nuisances.png (12 training images: clean, then one draw of each nuisance)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from git_ray.registry import NUISANCES

    arrays = glyphs.load_pool(None, glyphs.TRAIN_PER_CLASS, glyphs.TEST_PER_CLASS)
    x, y = arrays["x_train"], arrays["y_train"]  # (N, 28, 28) uint8, class-major
    n = int((y == 0).sum())
    rng = np.random.default_rng(0)
    gap, S = 2, 28

    def strip(imgs: np.ndarray) -> np.ndarray:  # (k, S, S) -> (S, k*S + (k-1)*gap), grey gaps
        out = np.full((S, len(imgs) * (S + gap) - gap), 70, np.uint8)
        for i, im in enumerate(imgs):
            out[:, i * (S + gap):i * (S + gap) + S] = im
        return out

    cells = [strip(x[c * n + np.sort(rng.choice(n, per_class, replace=False))]) for c in range(glyphs.NUM_CLASSES)]
    cw = cells[0].shape[1]
    rows = 7
    grid = np.full((rows * (S + 3 * gap), 7 * (cw + 4 * gap)), 140, np.uint8)
    for c, cell in enumerate(cells):
        r, q = divmod(c, 7)
        grid[r * (S + 3 * gap):r * (S + 3 * gap) + S, q * (cw + 4 * gap):q * (cw + 4 * gap) + cw] = cell
    paths = []
    im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    paths.append(os.path.join(folder, "glyphs_classes.png"))
    im.save(paths[-1])

    picks = [c * n + int(rng.integers(n)) for c in rng.choice(glyphs.NUM_CLASSES, 12, replace=False)]
    clean = torch.from_numpy(x[picks]).float().unsqueeze(1) / 255.0  # (12, 1, 28, 28)
    gen = torch.Generator().manual_seed(1)
    rows_img = [("clean", clean)] + [(name, NUISANCES.build(name, strength=1.0)(clean, gen))
                                     for name in ("rotation", "background", "dilation")]
    label_w = 90
    font = ImageFont.truetype(str(glyphs._font_dir() / "DejaVuSans.ttf"), 13)
    canvas = Image.new("L", (label_w + 12 * (S + gap) * scale, len(rows_img) * (S + gap) * scale), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (name, imgs) in enumerate(rows_img):
        row = strip((imgs[:, 0] * 255).round().to(torch.uint8).numpy())
        row_im = Image.fromarray(row).resize((row.shape[1] * scale, S * scale), Image.NEAREST)
        canvas.paste(row_im, (label_w, r * (S + gap) * scale))
        draw.text((4, r * (S + gap) * scale + S * scale // 2 - 8), name, fill=0, font=font)
    paths.append(os.path.join(folder, "glyphs_nuisances.png"))
    canvas.save(paths[-1])
    return paths


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="cached loads timed (best is printed)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (targets are for one)")
    ap.add_argument("--sanity", action="store_true", help="also train ResNet-20 on the balanced pool")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] for --sanity")
    ap.add_argument("--per-class", type=int, default=300, help="training images a class for --sanity")
    ap.add_argument("--epochs", type=int, default=8, help="epochs for --sanity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-timing", action="store_true", help="skip the build timing")
    ap.add_argument("--pictures", metavar="DIR", help="write the README's pictures (docs/img) and stop")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pictures:
        print("wrote", ", ".join(pictures(args.pictures)))
        return {}
    print(machine_line(args.device))
    figures: dict[str, float] = {}
    if not args.no_timing:
        t = time_build(args.repeats)
        figures.update(t)
        print(f"glyphs pool: {t['images']:,} images, {t['file_mb']:.0f} MB cache file")
        print(f"  cold build   {t['cold_wall_s']:6.2f} s wall, {t['cold_cpu_s']:6.2f} s CPU   (target < 15 s)")
        print(f"  cached load  {t['cached_wall_s']:6.2f} s wall, {t['cached_cpu_s']:6.2f} s CPU   (target < 1 s; "
              f"best of {args.repeats})")
    if args.sanity:
        s = sanity(args.device, args.per_class, args.epochs, args.seed)
        figures.update({f"sanity_{k}": v for k, v in s.items()})
        print(f"sanity: ResNet-20, balanced pool, {args.per_class} a class, {args.epochs} epochs on "
              f"{args.device}: test accuracy {s['accuracy']:.4f}, balanced {s['balanced_accuracy']:.4f} "
              f"({s['seconds']:.0f} s)")
    return figures


if __name__ == "__main__":
    main()
