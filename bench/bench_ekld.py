"""eKLD evaluation: git_ray's batched on-device estimator against the paper code's per-image path.

    python -m bench.bench_ekld [--device cpu|cuda] [--images-per-class 40] [--draws 100]
                               [--nuisances rotation,background,dilation] [--threads 1]

Both paths evaluate the same model (ResNet-20, 49 classes, 28x28x1, random weights with
BatchNorm statistics taken from the images and the head scaled so logits spread like a trained
net's), on the same images (synthetic K49-like strokes: the same choice of `images-per-class`
test images per class, the same shown images), with the same number of nuisance draws per image:

- ours: `git_ray.metrics.ekld` with the registered batched nuisance, as `run_trial` calls it;
  the nuisance and the model are wrapped in timers (the device is synchronised around each call);
- per image (the paper code's pattern): for every image and draw, uint8 array -> PIL image ->
  nuisance (PIL rotate bicubic / numpy background mask / PIL Max- and MinFilter) -> tensor; the
  draws of one image are stacked and go through the model together; KL against f(shown image).

Figures per nuisance: draws/s of each path's draw stage (everything but the model's forward passes),
the model's share of each path's time, the draw-stage and end-to-end ratios, and the agreement
of the two per-class estimates (they use different random draws and slightly different pixel
arithmetic, uint8 PIL vs float torch, so the agreement is statistical: Pearson correlation across
classes and mean |difference| relative to the mean eKLD). The defaults are small so that the
bench runs in about a minute on 2 CPU cores; the paper's estimator is --images-per-class 40
--draws 100 (196,000 draws per nuisance).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import git_ray.data  # noqa: F401  (registers the nuisances)
from bench.common import (Stopwatch, calibrated_model, cprofile, default_device, machine_line, print_figures,
                          pil_nuisance, set_threads, stroke_images, sync, timed, to_float, torch_profile)
from git_ray.config import EvalConfig
from git_ray.metrics import choose_images, ekld, kl_divergence
from git_ray.registry import NUISANCES
from git_ray.train.loop import Normaliser, make_predict

NUM_CLASSES, SIZE = 49, 28
NUISANCE_NAMES = ("rotation", "background", "dilation")
FIGURES = ("ours_draws_per_s", "per_image_draws_per_s", "draw_speedup", "ours_model_share",
           "per_image_model_share", "ours_seconds", "per_image_seconds", "end_to_end_ratio",
           "ekld_pearson", "ekld_mean_abs_diff", "ekld_rel_diff", "ekld_mean", "consistency_mean_abs_diff")


def per_image_ekld(predict, x_shown, images_u8, y, sel, nuisance_name, *, draws, num_classes, device,
                   rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The paper code's estimator: a Python loop over images and draws through PIL.

    Returns per-class eKLD (K,), consistency (K,) and the seconds spent in the model."""
    transform = pil_nuisance(nuisance_name)
    model_watch = Stopwatch(device)
    model = timed(predict, model_watch)
    kl_sum = torch.zeros(num_classes, dtype=torch.float64)
    agree = torch.zeros(num_classes, dtype=torch.float64)
    ref = torch.cat([model(x_shown[c]) for c in sel.split(batch_size)])  # (M, K) on the shown images
    for j, i in enumerate(sel.tolist()):
        batch = torch.stack([TF.to_tensor(transform(Image.fromarray(images_u8[i]), rng))
                             for _ in range(draws)])  # (draws, C, H, W)
        out = model(batch.to(device))  # (draws, K)
        kl_sum[y[i]] += kl_divergence(ref[j].expand_as(out), out).double().sum().cpu()
        agree[y[i]] += (out.argmax(1) == ref[j].argmax()).double().sum().cpu()
    n = torch.bincount(y[sel], minlength=num_classes).double() * draws
    return kl_sum / n, agree / n, model_watch.seconds


def bench_one(name: str, *, images_u8: np.ndarray, x_clean: torch.Tensor, y: torch.Tensor, model, norm,
              device: torch.device, images_per_class: int, draws: int, batch_size: int, seed: int,
              forward_batch: int | None = None,
              amp: bool, classes: int = NUM_CLASSES) -> dict[str, float]:
    nuisance = NUISANCES.build(name, strength=1.0)
    gen_shown = torch.Generator().manual_seed(seed + 1)
    x_shown = nuisance(x_clean, gen_shown).to(device)  # (N, C, H, W): one draw per test image, as shown
    x_clean_dev = x_clean.to(device)
    predict = make_predict(model, norm, device, amp)
    pairs = classes * images_per_class * draws

    # Warm-up: first calls pay for kernel selection and lazy initialisation.
    warm = torch.Generator(device=device).manual_seed(0)
    predict(x_clean_dev[:batch_size])
    nuisance(x_clean_dev[:batch_size], warm)
    sync(device)

    # ours: the real estimator, nuisance and model timed from outside
    draw_watch, model_watch = Stopwatch(device), Stopwatch(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    start = time.perf_counter()
    ours, ours_cons = ekld(timed(predict, model_watch), x_shown, x_clean_dev, y.to(device), timed(nuisance, draw_watch),
                           images_per_class=images_per_class, draws=draws, num_classes=classes,
                           generator=gen, batch_size=batch_size, forward_batch_size=forward_batch)
    sync(device)
    ours_s = time.perf_counter() - start

    # per image: same images (the same generator seed picks them), same model, same draw count
    sel = choose_images(y, classes, images_per_class, torch.Generator(device=device).manual_seed(seed))
    start = time.perf_counter()
    base, base_cons, base_model_s = per_image_ekld(
        predict, x_shown, images_u8, y, sel, name, draws=draws, num_classes=classes, device=device,
        rng=np.random.default_rng(seed), batch_size=batch_size)
    base_s = time.perf_counter() - start
    base_draw_s = base_s - base_model_s

    ours_np, base_np = ours.numpy(), base.numpy()
    ok = np.isfinite(ours_np) & np.isfinite(base_np)
    pearson = float(np.corrcoef(ours_np[ok], base_np[ok])[0, 1]) if ok.sum() > 2 and base_np[ok].std() > 0 else float("nan")
    mad = float(np.abs(ours_np[ok] - base_np[ok]).mean())
    mean = float(np.concatenate([ours_np[ok], base_np[ok]]).mean())
    # The draw stage of either path is everything except the model's forward passes: nuisance
    # draws (and, per image, the PIL and tensor conversions), gathers, KL and bookkeeping.
    ours_draw_s = ours_s - model_watch.seconds
    return {
        "pairs": pairs,
        "ours_draws_per_s": pairs / ours_draw_s,
        "ours_nuisance_only_draws_per_s": pairs / draw_watch.seconds,
        "per_image_draws_per_s": pairs / base_draw_s,
        "draw_speedup": base_draw_s / ours_draw_s,
        "ours_model_share": model_watch.seconds / ours_s,
        "per_image_model_share": base_model_s / base_s,
        "ours_seconds": ours_s,
        "per_image_seconds": base_s,
        "end_to_end_ratio": base_s / ours_s,
        "ekld_pearson": pearson,
        "ekld_mean_abs_diff": mad,
        "ekld_rel_diff": mad / mean if mean > 0 else float("nan"),
        "ekld_mean": mean,
        "consistency_mean_abs_diff": float((ours_cons - base_cons).abs().nanmean()),
    }


# ---------------------------------------------------------------------------------------------
# Where the time goes: the model by batch size


def model_rates(model, norm, x: torch.Tensor, device: torch.device, sizes: list[int], amp: bool) -> dict[str, float]:
    """Forward images/s of the eKLD model at several batch sizes (and channels-last on CPU)."""
    out: dict[str, float] = {}
    x = x[:max(sizes)].to(device)  # one full batch at the largest size
    variants = [("", model)]
    if device.type == "cpu":
        import copy
        variants.append(("channels_last.", copy.deepcopy(model).to(memory_format=torch.channels_last)))
    for tag, m in variants:
        predict = make_predict(m, norm, device, amp)
        for bs in sizes:
            chunks = [c.contiguous(memory_format=torch.channels_last) if tag else c for c in x.split(bs)]
            predict(chunks[0])
            sync(device)
            best = math.inf
            for _ in range(2):
                start = time.perf_counter()
                for c in chunks:
                    predict(c)
                sync(device)
                best = min(best, time.perf_counter() - start)
            out[f"model.{tag}img_per_s.batch{bs}"] = len(x) / best
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--images-per-class", type=int, default=6, help="test images per class (paper: 40)")
    ap.add_argument("--draws", type=int, default=12, help="nuisance draws per image (paper: 100)")
    ap.add_argument("--nuisances", default=",".join(NUISANCE_NAMES))
    ap.add_argument("--batch-size", type=int, default=1024, help="ours: nuisance draws per chunk (eval.batch_size)")
    ap.add_argument("--forward-batch", type=int, default=None,
                    help="ours: images per model call (eval.forward_batch; default as a trial: 256 on CPU, "
                         "--batch-size on CUDA)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: both paths on one core; 0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=NUM_CLASSES, help="classes (K49: 49; fewer only for smoke runs)")
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--profile", action="store_true",
                    help="print torch.profiler's top operators of our estimator and cProfile's top "
                         "entries of the per-image path, for the first nuisance")
    ap.add_argument("--no-diagnostics", action="store_true",
                    help="skip the model-by-batch-size measurements")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return figures keyed '<nuisance>.<figure>'."""
    args = parse(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    names = [n for n in args.nuisances.split(",") if n]
    forward = args.forward_batch or EvalConfig(batch_size=args.batch_size).forward_batch_for(device)
    print(f"== eKLD: batched on-device estimator vs per-image PIL path ({machine_line(device)})")
    print(f"   ResNet-20, {args.classes} classes, {SIZE}x{SIZE}x1, {args.images_per_class} images/class x "
          f"{args.draws} draws = {args.classes * args.images_per_class * args.draws:,} pairs per nuisance, "
          f"device {device}, draws in chunks of {args.batch_size}, model calls of {forward}")
    images_u8, labels = stroke_images(args.classes, args.images_per_class + 2, SIZE, seed=args.seed)
    x_clean, y = to_float(images_u8), torch.from_numpy(labels)
    norm = Normaliser.fit(x_clean.to(device))
    model = calibrated_model("resnet20", norm(x_clean.to(device)), args.classes, device=device, seed=args.seed)
    out: dict[str, float] = {}
    for name in names:
        figs = bench_one(name, images_u8=images_u8, x_clean=x_clean, y=y, model=model, norm=norm, device=device,
                         images_per_class=args.images_per_class, draws=args.draws, batch_size=args.batch_size,
                         forward_batch=forward,
                         seed=args.seed, amp=not args.no_amp, classes=args.classes)
        print_figures(name, figs, ["ours_draws_per_s", "per_image_draws_per_s", "draw_speedup",
                                   "ours_nuisance_only_draws_per_s", "ours_model_share", "per_image_model_share",
                                   "ours_seconds", "per_image_seconds", "end_to_end_ratio", "ekld_mean",
                                   "ekld_pearson", "ekld_rel_diff", "consistency_mean_abs_diff"])
        out.update({f"{name}.{k}": v for k, v in figs.items()})
    if args.profile and names:
        name = names[0]
        nuisance = NUISANCES.build(name, strength=1.0)
        x_shown = nuisance(x_clean, torch.Generator().manual_seed(1)).to(device)
        predict = make_predict(model, norm, device, not args.no_amp)
        print(f"  profile: our estimator, {name} (torch.profiler, top operators by self time)")
        print(torch_profile(lambda: ekld(predict, x_shown, x_clean.to(device), y.to(device), nuisance,
                                         images_per_class=args.images_per_class, draws=args.draws,
                                         num_classes=args.classes, batch_size=args.batch_size,
                                         generator=torch.Generator(device=device).manual_seed(0)), device=device))
        sel = choose_images(y, args.classes, args.images_per_class, torch.Generator().manual_seed(0))
        print(f"  profile: per-image path, {name} (cProfile, top entries by cumulative time)")
        print(cprofile(lambda: per_image_ekld(predict, x_shown, images_u8, y, sel, name, draws=args.draws,
                                              num_classes=args.classes, device=device,
                                              rng=np.random.default_rng(0), batch_size=args.batch_size)))
    if not args.no_diagnostics:
        more = to_float(stroke_images(NUM_CLASSES, 84, SIZE, seed=args.seed + 1)[0])  # (4116, 1, 28, 28)
        diag = model_rates(model, norm, more, device, sorted({args.batch_size, 256, args.draws}),
                           amp=not args.no_amp)
        print_figures("where the time goes (model forward by batch size)", diag)
        out.update(diag)
    return out


if __name__ == "__main__":
    main()
