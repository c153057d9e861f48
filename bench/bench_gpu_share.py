"""GPU packing and cost: how many K49-size trials one GPU holds, and the projected GPU-hours of
the full K49 study of METHOD.md.

    python -m bench.bench_gpu_share [--device cuda] [--procs 1,2,4,8] [--gen-procs 1,2,4,8]
                                    [--steps 200] [--gen-steps 100] [--gen-fused-json GENERATORS.json]

Packing: n processes at once (n in --procs), each with torch.cuda.set_per_process_memory_fraction(1/n)
(what a sweep trial with `gpu: 1/n` sets), each training ResNet-20 on K49-LT-size data (7,832
images, 28x28x1, 49 classes, batch 128, bf16 autocast, the training loop's step) for a fixed
number of steps after a warm-up; all start their timed steps together (a barrier). Reported per
n: images/s per process and in total. The GPU "holds" the largest n whose per-process rate is
still >= 90% of a lone process's. The same for MUNIT training at the paper's K49 size (batch 1).

Projection (GPU-hours, one GPU, packed at the best measured total rate): the K49 study is
3 nuisances x 30 class-order instances x {ERM, RS, DRS, oracle} = 360 classifiers of 50 epochs
on the 7,832 K49-LT training images; every epoch also validates on 100 images a class (4,900:
`eval.val_per_class` in sweeps/k49_invariance.yaml; the whole 46,473-image split, 20% of K49's
train set, is given apart as `validation_full_split_gpu_h`); then the test set (38,547)
and the eKLD estimator (49 x 40 x 100 draws). Generators: K49-BG and K49-DIL x 30 instances, 10,000
MUNIT steps at batch 1 each, at the best of the packed processes' total rate and, with
--gen-fused-json, the best fused rate of `bench_fused_generators` (G generators stacked in one
process, as a sweep's phase 0 trains them on a GPU). A GIT line (CE+DRS+GIT for BG and DIL, 60 classifiers whose last 20
epochs generate half of every batch) is given apart, since the brief's list does not include it.
"""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from bench.common import default_device, machine_line, print_figures, sync

K49_TRAIN_POOL, K49_TEST = 232_365, 38_547
K49_VAL = round(0.2 * K49_TRAIN_POOL)  # git_ray's val_fraction on the official train split
K49_VAL_PER_EPOCH = 49 * 100  # eval.val_per_class: 100 in the K49 sweep files
K49_CLASSES, EKLD_PAIRS = 49, 49 * 40 * 100
EPOCHS, S1 = 50, 30
BATCH = 128


def k49_lt_size() -> int:
    """Training images of K49-LT (Zipf alpha 2, largest class 4,800, every class >= 5)."""
    import git_ray.data  # noqa: F401  (registers profiles)
    from git_ray.registry import PROFILES

    return sum(PROFILES.build("zipf", num_classes=K49_CLASSES, imbalance_ratio=4800 / 5, zipf_alpha=2.0,
                              max_per_class=4800, min_per_class=5))


# ---------------------------------------------------------------------------------------------
# Workers (module level: spawned processes import them)


def _limit_memory(device: torch.device, n: int) -> None:
    if device.type == "cuda":
        # torch 2.11 rejects a CUDA device without an index here (ValueError): name the index
        # ("cuda" means the current device).
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.set_per_process_memory_fraction(1.0 / n, index)


def _classifier_worker(rank: int, n: int, device_name: str, images: int, steps: int, warmup: int,
                       barrier, queue) -> None:
    from bench.bench_train_step import Trainer, trial_config

    device = torch.device(device_name)
    _limit_memory(device, n)
    torch.backends.cudnn.benchmark = True
    g = torch.Generator().manual_seed(rank)
    x = torch.rand(images, 1, 28, 28, generator=g)  # speed does not depend on content
    y = torch.randint(0, K49_CLASSES, (images,), generator=g)
    data = SimpleNamespace(x_train=x.to(device), y_train=y.to(device), x_train_clean=x.to(device),
                           class_counts=torch.bincount(y, minlength=K49_CLASSES).to(device),
                           num_classes=K49_CLASSES, channels=1, image_size=28)
    tr = Trainer(data, trial_config("resnet20", "plain", "rotation"), device)
    order = torch.randint(0, images, (warmup + steps, BATCH), generator=g).to(device)
    for i in range(warmup):
        tr.step(order[i], i, timed=False)
    sync(device)
    if barrier is not None:
        barrier.wait()
    start = time.time()
    for i in range(warmup, warmup + steps):
        tr.step(order[i], i, timed=False)
    sync(device)
    end = time.time()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    queue.put((rank, start, end, steps * BATCH / (end - start), peak))


def _generator_worker(rank: int, n: int, device_name: str, images: int, steps: int, warmup: int,
                      barrier, queue, dim: int = 64) -> None:
    from git_ray.config import GeneratorConfig
    from git_ray.generative.train import train_munit

    device = torch.device(device_name)
    _limit_memory(device, n)
    g = torch.Generator().manual_seed(rank)
    y = torch.randint(0, K49_CLASSES, (images,), generator=g)
    data = SimpleNamespace(x_train=torch.rand(images, 1, 28, 28, generator=g), y_train=y, channels=1,
                           image_size=28, fingerprint="bench")
    stamps: dict[str, float] = {}

    def callback(step: int, losses: dict) -> None:
        if step == warmup:
            sync(device)
            if barrier is not None:
                barrier.wait()
            stamps["start"] = time.time()
        elif step == warmup + steps:
            sync(device)
            stamps["end"] = time.time()

    gcfg = GeneratorConfig(steps=warmup + steps, batch_size=1, dim=dim, n_res=4, mlp_dim=256, seed=rank)
    train_munit(data, gcfg, device=device, callback=callback, log=lambda m: None)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    queue.put((rank, stamps["start"], stamps["end"], steps / (stamps["end"] - stamps["start"]), peak))


def packed(worker, n: int, device: torch.device, images: int, steps: int, warmup: int,
           **extra) -> dict[str, float]:
    """Run `worker` in n processes at once (n = 1: in this process); per-process and total rate."""
    import multiprocessing as mp

    if n == 1:
        q: list = []
        worker(0, 1, str(device), images, steps, warmup, None, SimpleNamespace(put=q.append), **extra)
        results = q
        if device.type == "cuda":  # hand this process's cached blocks back before others start
            torch.cuda.empty_cache()
    else:
        ctx = mp.get_context("spawn")
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(r, n, str(device), images, steps, warmup, barrier, queue),
                             kwargs=extra) for r in range(n)]
        for p in procs:
            p.start()
        results = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
    rates = [r[3] for r in results]
    span = max(r[2] for r in results) - min(r[1] for r in results)
    done = n * steps * (BATCH if worker is _classifier_worker else 1)
    return {"per_process": sum(rates) / n, "per_process_min": min(rates), "total": done / span,
            "peak_mem_gib": max(r[4] for r in results) / 2**30}


# ---------------------------------------------------------------------------------------------
# Single-process rates the projection needs


def eval_rates(device: torch.device) -> dict[str, float]:
    """Forward images/s of ResNet-20 at eval batch 1024 and seconds of the full eKLD estimator."""
    import git_ray.data  # noqa: F401
    import git_ray.models  # noqa: F401
    from git_ray.metrics import ekld
    from git_ray.registry import ARCHS, NUISANCES
    from git_ray.train.loop import Normaliser, make_predict

    g = torch.Generator().manual_seed(0)
    n_test = 49 * 45 if device.type == "cuda" else 49 * 2
    x = torch.rand(n_test, 1, 28, 28, generator=g).to(device)
    y = torch.arange(n_test, device=device) % K49_CLASSES
    model = ARCHS.build("resnet20", in_channels=1, num_classes=K49_CLASSES, width=16, head="linear",
                        image_size=28).to(device)
    predict = make_predict(model, Normaliser.fit(x), device, amp=True)
    batch = torch.rand(1024 if device.type == "cuda" else 64, 1, 28, 28, generator=g).to(device)
    reps = 30 if device.type == "cuda" else 1
    predict(batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        predict(batch)
    sync(device)
    fwd = reps * len(batch) / (time.perf_counter() - start)
    ipc, draws = (40, 100) if device.type == "cuda" else (1, 2)
    start = time.perf_counter()
    ekld(predict, x, x, y, NUISANCES.build("rotation", strength=1.0), images_per_class=ipc, draws=draws,
         num_classes=K49_CLASSES, generator=torch.Generator(device=device).manual_seed(0), batch_size=1024)
    sync(device)
    ekld_s = time.perf_counter() - start
    return {"eval_images_per_s": fwd, "ekld_seconds": ekld_s, "ekld_pairs": float(K49_CLASSES * ipc * draws)}


def git_rate(device: torch.device, steps: int, warmup: int) -> float:
    """images/s of a GIT training step (paper-size MUNIT generating half of each batch)."""
    from bench.bench_train_step import PAPER_GENERATOR, Trainer, make_data, trial_config
    from git_ray.generative import GitAugmenter
    from git_ray.generative.networks import build_munit

    data, _, _ = make_data("resnet20", 2048 if device.type == "cuda" else 256, "rotation", seed=0)
    data = SimpleNamespace(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(data).items()})
    cfg = trial_config("resnet20", "git", "rotation")
    munit, _ = build_munit(in_channels=1, image_size=28, gcfg=PAPER_GENERATOR,
                           generator=torch.Generator().manual_seed(0), device=device)
    tr = Trainer(data, cfg, device, GitAugmenter(munit, data, cfg.augment, s1=0, seed=0, device=device))
    return BATCH / tr.run(steps, warmup, timed=False)


def project_k49(train_total: float, eval_ips: float, ekld_s_per_trial: float, gen_total: float,
                git_ips: float | None, n_train: int) -> dict[str, float]:
    """GPU-hours of the K49 study from measured rates (see the module docstring for the terms)."""
    trials = 3 * 30 * 4
    train_img = trials * EPOCHS * n_train
    val_img = trials * EPOCHS * K49_VAL_PER_EPOCH
    test_img = trials * K49_TEST
    out = {
        "classifiers": float(trials),
        "train_gpu_h": train_img / train_total / 3600,
        "validation_gpu_h": val_img / eval_ips / 3600,
        "test_and_ekld_gpu_h": (test_img / eval_ips + trials * ekld_s_per_trial) / 3600,
        "generators": 60.0,
        "generator_gpu_h": 60 * 10_000 / gen_total / 3600,
    }
    out["total_gpu_h"] = sum(v for k, v in out.items() if k.endswith("_gpu_h"))
    out["validation_full_split_gpu_h"] = trials * EPOCHS * K49_VAL / eval_ips / 3600  # apart, not in the total
    if git_ips:  # 60 more classifiers: epochs before s1 as plain, from s1 on at the GIT step's rate
        git_trials = 2 * 30
        out["git_extra_gpu_h"] = (git_trials * n_train * (S1 / train_total + (EPOCHS - S1) / git_ips)
                                  + git_trials * (EPOCHS * K49_VAL_PER_EPOCH + K49_TEST) / eval_ips
                                  + git_trials * ekld_s_per_trial) / 3600
    return out


def holds(rates: dict[int, dict[str, float]], keep: float = 0.9) -> int:
    """Largest n whose per-process rate is still >= keep x a lone process's."""
    base = rates[min(rates)]["per_process"]
    return max(n for n, r in rates.items() if r["per_process"] >= keep * base)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--procs", default="1,2,4,8", help="classifier processes at once")
    ap.add_argument("--gen-procs", default="1,2,4,8", help="generator processes at once")
    ap.add_argument("--steps", type=int, default=200, help="timed classifier steps per process")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--gen-steps", type=int, default=100, help="timed MUNIT steps per process")
    ap.add_argument("--gen-warmup", type=int, default=10)
    ap.add_argument("--gen-dim", type=int, default=64, help="MUNIT width (the paper's 64; smaller for smoke runs)")
    ap.add_argument("--images", type=int, default=None, help="training images per process (default: K49-LT's)")
    ap.add_argument("--git-steps", type=int, default=20, help="timed GIT steps for the GIT line (0: skip)")
    ap.add_argument("--gen-fused-json", default=None,
                    help="a `bench_fused_generators --json` file measured on the same device: its best "
                         "fused rate joins the packed ones for the projection's generators")
    ap.add_argument("--json", default=None, help="also write the figures and the machine to this file "
                                                 "(bench_fused --share-json reads it)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return its figures."""
    args = parse(argv)
    device = torch.device(args.device)
    n_train = k49_lt_size()
    images = args.images or n_train
    print(f"== GPU packing and K49 study cost ({machine_line(device)})")
    print(f"   device {device}; ResNet-20 on {images:,} images x 28x28x1, batch {BATCH}; "
          f"MUNIT dim 64 n_res 4 at batch 1")
    out: dict[str, float] = {"k49_lt_train_images": float(n_train)}
    cls = {n: packed(_classifier_worker, n, device, images, args.steps, args.warmup)
           for n in (int(p) for p in args.procs.split(","))}
    for n, r in cls.items():
        out.update({f"classifier.n{n}.{k}": v for k, v in r.items()})
    gen = {n: packed(_generator_worker, n, device, images, args.gen_steps, max(1, args.gen_warmup), dim=args.gen_dim)
           for n in (int(p) for p in args.gen_procs.split(","))}
    for n, r in gen.items():
        out.update({f"generator.n{n}.{k}": v for k, v in r.items()})
    out["classifier.holds"] = float(holds(cls))
    out["generator.holds"] = float(holds(gen))
    best_cls = max(r["total"] for r in cls.values())
    best_gen = max(r["total"] for r in gen.values())
    out["generator.best_packed_total_steps_per_s"] = best_gen
    if args.gen_fused_json:  # G generators stacked in one process (bench_fused_generators)
        import json

        with open(args.gen_fused_json) as f:
            fused = json.load(f)["figures"]
        if "best_steps_per_s" in fused:
            out["generator.fused_total_steps_per_s"] = fused["best_steps_per_s"]
            best_gen = max(best_gen, fused["best_steps_per_s"])
    out["classifier.best_total_images_per_s"] = best_cls
    out["generator.best_total_steps_per_s"] = best_gen
    ev = eval_rates(device)
    out.update({f"eval.{k}": v for k, v in ev.items()})
    ekld_s = ev["ekld_seconds"] * EKLD_PAIRS / ev["ekld_pairs"]  # scaled to the paper's 196,000 pairs
    git_ips = git_rate(device, args.git_steps, max(2, args.git_steps // 4)) if args.git_steps else None
    if git_ips:
        out["git.images_per_s"] = git_ips
    proj = project_k49(best_cls, ev["eval_images_per_s"], ekld_s, best_gen, git_ips, n_train)
    out.update({f"k49_study.{k}": v for k, v in proj.items()})
    print_figures("classifiers packed n at a time (images/s per process, total)",
                  {k: v for k, v in out.items() if k.startswith("classifier.")})
    print_figures("generators packed n at a time (steps/s per process, total)",
                  {k: v for k, v in out.items() if k.startswith("generator.")})
    print_figures("single-process evaluation and GIT step", {k: v for k, v in out.items()
                                                              if k.startswith(("eval.", "git."))})
    print_figures(f"projected K49 study on one {'GPU' if device.type == 'cuda' else 'CPU (not meaningful)'}",
                  {k: v for k, v in out.items() if k.startswith("k49_study.")})
    if args.json:
        from bench.common import save_figures

        save_figures(args.json, device, argv, out)
    return out


if __name__ == "__main__":
    main()
