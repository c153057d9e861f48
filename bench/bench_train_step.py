"""Training-step throughput: plain, oracle and GIT steps, and the data pipeline's share of a step
against a DataLoader that converts each image separately (the paper code's pattern).

    python -m bench.bench_train_step [--device cpu|cuda] [--steps N] [--warmup N]
                                     [--archs resnet20,resnet32] [--modes plain,oracle,git]
                                     [--nuisance rotation] [--workers 0] [--loop-check]

Two settings at batch 128: ResNet-20 on 28x28x1 (K49-LT: 49 classes) and ResNet-32 on 32x32x3
(CIFAR-10-LT: 10 classes, random flips), on synthetic stroke images (speed does not depend on
content). Modes:
- plain: a batch is gathered from the training tensor already on the device;
- oracle: the true nuisance (--nuisance) drawn afresh on the clean images of the batch;
- git: from the first epoch on, half of every batch replaced by MUNIT translations (the paper's
  generator size: dim 64, 4 residual blocks, MLP 256; random weights: speed only).

The step is the one `git_ray.train.loop.train_classifier` runs (index, oracle, flip, GIT
augmenter, bf16 autocast on CUDA, loss, NaN check, backward, SGD), timed by stage: data (gather,
oracle, flip), augment (GIT generation) and model (forward, loss, backward, optimiser). On CUDA the
stage split comes from a second pass with a synchronisation between stages; images/s comes from
a pass without them. `--loop-check` also runs the real `train_classifier` for two epochs and
reports its second epoch's images/s beside the mirror's (default on CUDA, where it is cheap).
Step times are medians over the timed steps (robust to a busy neighbour on a shared machine).

The per-image pipeline: a torch DataLoader over uint8 images whose dataset does, for each image,
numpy -> PIL -> (oracle: the PIL nuisance; CIFAR: PIL flip) -> tensor -> normalise, collated into
a batch of 128 and moved to the device. Its share of a step is its time per batch over (its time +
our augment and model stages): what the step would cost with it, measured side by side.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import git_ray.balance  # noqa: F401  (registers losses, samplers, class weights)
import git_ray.data  # noqa: F401  (registers nuisances)
import git_ray.models  # noqa: F401  (registers archs)
from bench.common import (Stopwatch, default_device, machine_line, pil_nuisance, print_figures,
                          set_threads, stroke_images, sync, to_float, torch_profile)
from git_ray.config import (AugmentConfig, BalanceConfig, DatasetConfig, EvalConfig, GeneratorConfig,
                            ModelConfig, TrainConfig, TrialConfig)
from git_ray.generative import GitAugmenter
from git_ray.generative.networks import build_munit
from git_ray.registry import ARCHS, LOSSES, NUISANCES
from git_ray.train.loop import Normaliser, lr_at, train_classifier

BATCH = 128
# name -> (arch, image size, channels, classes, flip): the paper's K49 and CIFAR settings
SETTINGS = {
    "resnet20": ("resnet20", 28, 1, 49, False),
    "resnet32": ("resnet32", 32, 3, 10, True),
}
MODES = ("plain", "oracle", "git")
PAPER_GENERATOR = GeneratorConfig(dim=64, n_res=4, mlp_dim=256, style_dim=8, n_downsample=2)


def make_data(setting: str, n: int, nuisance: str, seed: int) -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    """A LongTailData-shaped namespace of synthetic images (and the uint8 arrays the per-image
    loader reads: clean images, and the images with one nuisance draw as stored for training)."""
    _, size, channels, classes, _ = SETTINGS[setting]
    u8, labels = stroke_images(classes, math.ceil(n / classes), size, channels, seed=seed)
    u8, labels = u8[:n], labels[:n]
    clean = to_float(u8)
    shown = NUISANCES.build(nuisance, strength=1.0)(clean, torch.Generator().manual_seed(seed))
    shown_u8 = (shown * 255).round().to(torch.uint8)
    shown_u8 = shown_u8[:, 0].numpy() if channels == 1 else shown_u8.permute(0, 2, 3, 1).contiguous().numpy()
    y = torch.from_numpy(labels)
    data = SimpleNamespace(
        x_train=shown, y_train=y, x_train_clean=clean, x_val=shown[:2], y_val=y[:2],
        class_counts=torch.bincount(y, minlength=classes), num_classes=classes, channels=channels,
        image_size=size, fingerprint=f"bench-{setting}")
    return data, u8, shown_u8


def trial_config(setting: str, mode: str, nuisance: str, epochs: int = 2, batch_size: int = BATCH) -> TrialConfig:
    arch, size, _, _, flip = SETTINGS[setting]
    return TrialConfig(
        dataset=DatasetConfig(nuisance=nuisance), model=ModelConfig(arch=arch),
        train=TrainConfig(epochs=epochs, batch_size=batch_size, s1=epochs, s2=epochs, warmup_epochs=1),
        balance=BalanceConfig(), eval=EvalConfig(),
        augment=AugmentConfig(oracle=mode == "oracle", flip=flip, git=mode == "git", git_start="start"),
        generator=PAPER_GENERATOR)


class Trainer:
    """The inner step of `train_classifier`, with optional stage timers."""

    def __init__(self, data: SimpleNamespace, cfg: TrialConfig, device: torch.device, augmenter=None):
        self.data, self.cfg, self.device, self.augmenter = data, cfg, device, augmenter
        arch = cfg.model.arch
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = ARCHS.build(arch, in_channels=data.channels, num_classes=data.num_classes,
                                     width=cfg.model.width, head=cfg.head, image_size=data.image_size).to(device)
        self.norm = Normaliser.fit(data.x_train)
        self.loss_fn = LOSSES.build("ce", class_counts=data.class_counts, cfg=cfg.balance).to(device)
        t = cfg.train
        self.opt = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.oracle = NUISANCES.build(cfg.dataset.nuisance, strength=1.0) if cfg.augment.oracle else None
        self.gen = torch.Generator(device=device).manual_seed(1)
        self.use_amp = t.amp and device.type == "cuda"
        self.stages = {k: Stopwatch(device) for k in ("data", "augment", "model")}

    def step(self, bi: torch.Tensor, step: int, timed: bool) -> None:
        d, stage = self.data, (lambda k: self.stages[k]()) if timed else (lambda k: contextlib.nullcontext())
        self.model.train()
        with stage("data"):
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.cfg, step / 100)
            x, y = d.x_train[bi], d.y_train[bi]  # (B, C, H, W), (B,)
            if self.oracle is not None:
                x = self.oracle(d.x_train_clean[bi], self.gen)
            if self.cfg.augment.flip:
                flip = torch.rand(len(x), device=self.device, generator=self.gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        with stage("augment"):
            if self.augmenter is not None:
                x, y = self.augmenter(x, y, 0)
        with stage("model"):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                logits = self.model(self.norm(x))
            loss = self.loss_fn(logits.float(), y, None)
            if not torch.isfinite(loss):  # the loop's NaN check (a device sync per step)
                raise FloatingPointError("loss is not finite")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def run(self, steps: int, warmup: int, timed: bool, seed: int = 0) -> float:
        """Median seconds of one step over `steps` steps after `warmup` untimed ones; with
        `timed`, `self.per_step[stage]` holds each stage's median seconds per step. Medians,
        because on a shared machine a neighbour's burst lands on some steps and not others."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.data.y_train)
        batch = self.cfg.train.batch_size
        batches = [torch.randint(0, n, (batch,), generator=g).to(self.device) for _ in range(warmup + steps)]
        for i in range(warmup):
            self.step(batches[i], i, timed=False)
        step_s: list[float] = []
        stage_s: dict[str, list[float]] = {k: [] for k in self.stages}
        for i in range(warmup, warmup + steps):
            before = {k: w.seconds for k, w in self.stages.items()}
            sync(self.device)
            start = time.perf_counter()
            self.step(batches[i], i, timed=timed)
            sync(self.device)
            step_s.append(time.perf_counter() - start)
            for k, w in self.stages.items():
                stage_s[k].append(w.seconds - before[k])
        self.per_step = {k: float(np.median(v)) for k, v in stage_s.items()}
        return float(np.median(step_s))


class PerImageDataset(Dataset):
    """The paper code's dataset: each item goes numpy -> PIL -> transform -> tensor -> normalise."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, flip: bool, mean, std, seed: int):
        self.images, self.labels, self.transform, self.flip = images, labels, transform, flip
        self.mean, self.std = mean, std
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torchvision.transforms.functional as TF  # the reference path only: GPU runs go without it
        from PIL import Image

        img = Image.fromarray(self.images[i])
        img = self.transform(img, self.rng)
        if self.flip and self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std), int(self.labels[i])


def per_image_loader_seconds(images: np.ndarray, labels: np.ndarray, transform_name: str, flip: bool,
                             norm: Normaliser, device: torch.device, batches: int, workers: int,
                             batch_size: int = BATCH) -> float:
    """Seconds per batch from a DataLoader converting each image separately (to device)."""
    ds = PerImageDataset(images, labels, pil_nuisance(transform_name), flip,
                         norm.mean.flatten().tolist(), norm.std.flatten().tolist(), seed=0)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    it = iter(loader)
    next(it)  # first batch starts the workers, if any
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    return (time.perf_counter() - start) / batches


def loop_images_per_s(data: SimpleNamespace, cfg: TrialConfig, device: torch.device, augmenter) -> float:
    """images/s of the real `train_classifier` over its second epoch (the first pays warm-up)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ARCHS.build(cfg.model.arch, in_channels=data.channels, num_classes=data.num_classes,
                            width=cfg.model.width, head=cfg.head, image_size=data.image_size).to(device)
    rows, _ = train_classifier(model, data, cfg, device=device, augmenter=augmenter)
    return len(data.y_train) / rows[-1]["seconds"]


def bench_setting(setting: str, modes: list[str], args, device: torch.device) -> dict[str, float]:
    batch = args.batch_size
    n = args.images or (7832 if device.type == "cuda" else max(batch * 4, batch * (args.steps + args.warmup)))
    data, clean_u8, shown_u8 = make_data(setting, n, args.nuisance, seed=0)
    data = SimpleNamespace(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(data).items()})
    flip = SETTINGS[setting][4]
    out: dict[str, float] = {}
    loader_s: dict[str, float] = {}
    for mode in modes:
        cfg = trial_config(setting, mode, args.nuisance, batch_size=batch)
        augmenter = None
        if mode == "git":
            munit, _ = build_munit(in_channels=data.channels, image_size=data.image_size, gcfg=PAPER_GENERATOR,
                                   generator=torch.Generator().manual_seed(0), device=device)
            augmenter = GitAugmenter(munit, data, cfg.augment, s1=0, seed=0, device=device)
        tr = Trainer(data, cfg, device, augmenter)
        if device.type == "cuda":  # images/s without stage syncs, then the stage split with them
            step_s = tr.run(args.steps, args.warmup, timed=False)
            tr.run(args.steps, 0, timed=True, seed=1)
        else:  # syncs cost nothing on the CPU: one pass gives both
            step_s = tr.run(args.steps, args.warmup, timed=True)
        st = tr.per_step  # median seconds per step of each stage
        total = sum(st.values())
        # The per-image loader does the gather/oracle/flip work; GIT generation and the model stay.
        src = "plain" if mode in ("plain", "git") else "oracle"
        if src not in loader_s:
            loader_s[src] = per_image_loader_seconds(
                clean_u8 if src == "oracle" else shown_u8, data.y_train.cpu().numpy(),
                args.nuisance if src == "oracle" else "none", flip, tr.norm, device, args.loader_batches,
                args.workers, batch)
        lb = loader_s[src]
        per_image_step = lb + st["augment"] + st["model"]
        key = f"{setting}.{mode}"
        out.update({
            f"{key}.images_per_s": batch / step_s,
            f"{key}.data_share": st["data"] / total,
            f"{key}.augment_share": st["augment"] / total,
            f"{key}.model_share": st["model"] / total,
            f"{key}.per_image_loader_images_per_s": batch / lb,
            f"{key}.per_image_loader_share": lb / per_image_step,
            f"{key}.per_image_step_images_per_s": batch / per_image_step,
            f"{key}.speedup_vs_per_image": per_image_step / step_s,
        })
        if args.profile:
            print(f"  profile: {setting} {mode}, 2 steps (torch.profiler, top operators by self time)")
            print(torch_profile(lambda: tr.run(2, 0, timed=False, seed=2), device=device))
        if args.loop_check if args.loop_check is not None else device.type == "cuda":
            out[f"{key}.loop_images_per_s"] = loop_images_per_s(data, cfg, device, augmenter)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--archs", default=",".join(SETTINGS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--nuisance", default="rotation", help="the oracle's nuisance (default: the costliest)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 CPU, 50 CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 CPU, 10 CUDA)")
    ap.add_argument("--images", type=int, default=None, help="training images (default: 7,832 = K49-LT on CUDA)")
    ap.add_argument("--batch-size", type=int, default=BATCH, help="images per step (the paper's 128)")
    ap.add_argument("--loader-batches", type=int, default=3, help="batches timed from the per-image DataLoader")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (the paper's pattern)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators per mode")
    ap.add_argument("--loop-check", dest="loop_check", action="store_true", default=None,
                    help="also time the real train_classifier (default on CUDA)")
    ap.add_argument("--no-loop-check", dest="loop_check", action="store_false")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return figures keyed '<arch>.<mode>.<figure>'."""
    args = parse(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"== training step at batch {args.batch_size}: plain / oracle ({args.nuisance}) / GIT ({machine_line(device)})")
    print(f"   device {device}{' (bf16 autocast)' if device.type == 'cuda' else ''}, {args.steps} timed steps "
          f"after {args.warmup}, per-image DataLoader with {args.workers} workers")
    out: dict[str, float] = {}
    modes = [m for m in args.modes.split(",") if m]
    for setting in [a for a in args.archs.split(",") if a]:
        figs = bench_setting(setting, modes, args, device)
        arch, size, ch, classes, _ = SETTINGS[setting]
        print_figures(f"{arch} {size}x{size}x{ch}, {classes} classes", figs)
        out.update(figs)
    return out


if __name__ == "__main__":
    main()
