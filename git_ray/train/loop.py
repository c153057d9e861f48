"""The classifier training loop: one readable function, read top to bottom.

Phases: resolve device and seeds -> normalisation statistics -> model, optimiser, balance
objects -> epochs (sampler order, augmentation, step, schedule) -> per-epoch validation, handed
to `report`. Nothing here knows about Ray or Parquet; `report(row)` is the only tie outside.
`report` returning `STOP` ends training after that epoch (a scheduler stopped the trial early):
the caller evaluates the model as it stands.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from git_ray.config import TrialConfig
from git_ray.metrics import balanced_accuracy, per_class_accuracy
from git_ray.registry import CLASS_WEIGHTS, LOSSES, NUISANCES, SAMPLERS
from git_ray.train.fused import MemberSGD, StackedClassifier, stacked_predict
from git_ray.train.optim import MomentumSGD


STOP = "stop"  # what `report` returns to end training early (the trial was stopped by a scheduler)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the trial cannot go on."""


class Augmenter(Protocol):
    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, Tensor]: ...


def resolve_device(preference: str = "auto", assigned: str | torch.device | None = None) -> torch.device:
    """The one device a trial runs on: what the scheduler assigned, else the config's choice."""
    if assigned is not None:
        return torch.device(assigned)
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The model on `device`, channels-last: oneDNN's convolutions run faster in that layout
    (measured on 1 CPU core: small_cnn 1.7x in training and 2.6x in evaluation, ResNet-20 1.2x),
    and so do cuDNN's in bf16 (measured on an H100, issue 14: ResNet-20 at batch 1024, 34k
    images/s in the default layout, 125k channels-last). Only the memory layout changes: the
    same weights, results equal up to float rounding."""
    return model.to(device).to(memory_format=torch.channels_last)


def lr_at(cfg: TrialConfig, epoch_progress: float) -> float:
    """The paper's schedule: linear warm-up over `warmup_epochs`, x0.01 after s1, x1e-4 after s2.

    `epoch_progress` is fractional (epoch + step / steps_per_epoch) so warm-up is smooth.
    """
    t = cfg.train
    lr = t.lr
    if t.warmup_epochs:  # epoch e of the warm-up runs at (e + 1) / warmup_epochs of lr
        lr *= min(1.0, (epoch_progress + 1) / t.warmup_epochs)
    epoch = int(epoch_progress)
    if epoch >= t.s2:
        lr *= 1e-4
    elif epoch >= t.s1:
        lr *= 1e-2
    return lr


@dataclass
class Normaliser:
    """Per-channel standardisation with the training set's statistics."""

    mean: Tensor  # (1, C, 1, 1)
    std: Tensor  # (1, C, 1, 1)

    @classmethod
    def fit(cls, x: Tensor) -> "Normaliser":  # x: (N, C, H, W)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        return cls(mean, std)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def make_predict(model: nn.Module, norm: Normaliser, device: torch.device, amp: bool,
                 logit_scale: float = 1.0) -> Callable[[Tensor], Tensor]:
    """A batch -> logits function for evaluation: eval mode, no grad, normalised, float32 out,
    scaled as the loss saw them (`TrialConfig.logit_scale`)."""

    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            return model(norm(x.to(device))).float() * logit_scale

    return predict


def batched_predict(predict: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([predict(chunk) for chunk in x.split(batch_size)]) if len(x) else x.new_zeros(0)


def validation_subset(x: Tensor, y: Tensor, num_classes: int, per_class: int | None) -> tuple[Tensor, Tensor]:
    """The first `per_class` images of every class in the validation split's order (the data
    files' order): a fixed, class-balanced subset, the same for every trial on the split;
    everything when `per_class` is None."""
    if per_class is None:
        return x, y
    rank = torch.zeros_like(y)  # (N,) position of each image among the images of its class
    for c in range(num_classes):
        members = torch.nonzero(y == c).flatten()
        rank[members] = torch.arange(len(members), device=y.device)
    keep = torch.nonzero(rank < per_class).flatten()  # (M,) in the split's order
    return x[keep], y[keep]


@dataclass
class Member:
    """One trial's share of a training run: its config, its data (on the device), where its
    epoch rows go and its augmenter. A lone trial is a run of one member."""

    cfg: TrialConfig
    data: Any  # git_ray.data.LongTailData, already on the device
    report: Callable[[dict], Any] | None = None  # may return STOP
    augmenter: Augmenter | None = None


@dataclass
class MemberRun:
    """What training left for one member: its epoch rows and input normaliser, or the error
    that stopped it (then the rows stop at the epoch before)."""

    rows: list[dict]
    norm: Normaliser
    error: NonFiniteLossError | None = None


@dataclass
class _MemberState:
    """A member's own training objects: normaliser, loss, class weights, sampler, oracle, RNG."""

    cfg: TrialConfig
    data: Any
    norm: Normaliser
    loss_fn: nn.Module
    weights: Any
    sampler: Any
    oracle: Any
    gen: torch.Generator
    augmenter: Augmenter | None
    x_val: Tensor
    y_val: Tensor
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def build(cls, m: Member, device: torch.device) -> "_MemberState":
        cfg, data, t, b = m.cfg, m.data, m.cfg.train, m.cfg.balance
        counts = data.class_counts.to(device)
        x_val, y_val = validation_subset(data.x_val, data.y_val, data.num_classes, cfg.eval.val_per_class)
        return cls(
            cfg=cfg, data=data, norm=Normaliser.fit(data.x_train),
            loss_fn=LOSSES.build(b.loss, class_counts=counts, cfg=b).to(device),
            weights=CLASS_WEIGHTS.build(b.reweight, class_counts=counts, cfg=b, s1=t.s1),
            sampler=SAMPLERS.build(b.sampler, labels=data.y_train.cpu(), num_classes=data.num_classes,
                                   s1=t.s1, batch_size=t.batch_size, seed=cfg.seed),
            oracle=NUISANCES.build(cfg.dataset.nuisance, strength=cfg.augment.nuisance_strength)
            if cfg.augment.oracle else None,
            # Randomness of augmentation draws: one generator on the data's device, seeded per trial.
            gen=torch.Generator(device=device).manual_seed(cfg.seed * 7919 + 1),
            augmenter=m.augmenter, x_val=x_val, y_val=y_val)

    def batches(self, epoch: int, device: torch.device) -> list[Tensor]:
        order = self.sampler.indices(epoch).to(device)
        return [bi for bi in order.split(self.cfg.train.batch_size) if len(bi) > 1]  # BN needs 2+ images

    def batch(self, bi: Tensor, epoch: int) -> tuple[Tensor, Tensor]:
        """The normalised, augmented batch `bi` of this member: (B, C, H, W), (B,)."""
        data = self.data
        x, y = data.x_train[bi], data.y_train[bi]  # (B, C, H, W), (B,)
        if self.oracle is not None:  # the true nuisance, freshly drawn on the clean image
            x = self.oracle(data.x_train_clean[bi], self.gen)
        if self.cfg.augment.flip:
            flip = torch.rand(len(x), device=x.device, generator=self.gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.augmenter is not None:
            x, y = self.augmenter(x, y, epoch)
        return self.norm(x), y


def train_classifier(
    model: nn.Module,
    data,  # git_ray.data.LongTailData, already on `device`
    cfg: TrialConfig,
    *,
    device: torch.device,
    report: Callable[[dict], Any] | None = None,
    augmenter: Augmenter | None = None,
) -> tuple[list[dict], Normaliser]:
    """Train `model` in place; return one row per epoch and the input normaliser it used
    (fewer rows than `cfg.train.epochs` when `report` returned STOP)."""
    (run,) = train_members(model, [Member(cfg, data, report, augmenter)], device=device)
    if run.error is not None:
        raise run.error
    return run.rows, run.norm


def train_members(model: nn.Module, members: list[Member], *, device: torch.device,
                  nan_check_every: int = 50, compile_mode: str | None = None) -> list[MemberRun]:
    """Train G members at once: `model` is one member's network (G = 1) or the members'
    `StackedClassifier` (git_ray.train.fused). Every member has its own data, sampler, loss,
    class weights, schedule, augmentation and seed, exactly as if it trained alone; they share
    epochs, batch size and the number of batches. Finite losses are checked on the device and
    read every `nan_check_every` steps and at the end of each epoch (no host synchronisation per
    step); a member whose loss is not finite stops there with its error, the others go on.
    A `report` returning STOP (a scheduler stopped the Tune trial) ends training for every
    member after that epoch: a fused group is one Tune trial, so it stops as a whole.
    `compile_mode` ("default", "reduce-overhead": CUDA graphs, ...) runs the training forward
    through torch.compile; off by default (measured by bench/bench_fused.py, not assumed)."""
    G = len(members)
    fused = isinstance(model, StackedClassifier)
    if fused != (G > 1) or (fused and model.members != G):
        raise ValueError(f"{G} member(s) need {'a StackedClassifier of as many' if G > 1 else 'a plain model'}")
    t = members[0].cfg.train
    for m in members:
        if (m.cfg.train.epochs, m.cfg.train.batch_size, m.cfg.train.amp) != (t.epochs, t.batch_size, t.amp):
            raise ValueError("fused members must share train.epochs, train.batch_size and train.amp")
    states = [_MemberState.build(m, device) for m in members]
    if device.type == "cuda":  # a few fixed shapes, thousands of steps: cuDNN picks its kernels once
        torch.backends.cudnn.benchmark = True
    use_amp = t.amp and device.type == "cuda"
    if fused:
        opt: Any = MemberSGD(model, lr=[m.cfg.train.lr for m in members],
                             momentum=[m.cfg.train.momentum for m in members],
                             weight_decay=[m.cfg.train.weight_decay for m in members])
    else:
        opt = MomentumSGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model
    forward_batch = members[0].cfg.eval.forward_batch_for(device)

    runs = [MemberRun(s.rows, s.norm) for s in states]
    alive = [True] * G
    alive_t = torch.ones(G, dtype=torch.bool, device=device)  # (G,)
    bad_epoch = torch.full((G,), -1, dtype=torch.long, device=device)  # (G,) first non-finite loss
    bad_step = torch.full((G,), -1, dtype=torch.long, device=device)
    bad_loss = torch.zeros(G, device=device)  # (G,) that loss
    for epoch in range(t.epochs):
        start = time.perf_counter()
        model.train()
        weights = [s.weights.for_epoch(epoch) for s in states]
        batch_lists = [s.batches(epoch, device) for s in states]
        sizes = [len(bi) for bi in batch_lists[0]]
        if any([len(bi) for bi in bl] != sizes for bl in batch_lists[1:]):
            raise ValueError(f"fused members have different batches at epoch {epoch}: they need the same "
                             "number of training images and samplers that draw one epoch of them")
        loss_sum = torch.zeros(G, device=device)  # (G,)
        correct = torch.zeros(G, device=device)  # (G,)
        seen = 0
        for step in range(len(sizes)):
            for group, m in zip(opt.param_groups, members):
                group["lr"] = lr_at(m.cfg, epoch + step / len(sizes))
            xs, ys = zip(*(s.batch(bl[step], epoch) for s, bl in zip(states, batch_lists)))
            x = xs[0] if G == 1 else torch.cat(xs, dim=1)  # (B, G*C, H, W): member g in channels g*C..
            y = torch.stack(ys, dim=1)  # (B, G)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = forward(x)
            # bf16 (autocast) -> float32 for the loss; float64 (the equality tests) stays.
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32)).view(len(y), G, -1)  # (B, G, K)
            losses = torch.stack([s.loss_fn(logits[:, g], ys[g], weights[g]) for g, s in enumerate(states)])  # (G,)
            if t.nan_check:  # remember each member's first non-finite loss, on the device
                newly = ~torch.isfinite(losses.detach()) & (bad_epoch < 0)
                bad_epoch = torch.where(newly, epoch, bad_epoch)
                bad_step = torch.where(newly, step, bad_step)
                bad_loss = torch.where(newly, losses.detach().float(), bad_loss)
            opt.zero_grad(set_to_none=True)
            # Parameters are disjoint, so the sum gives each member its own gradient.
            torch.where(alive_t, losses, 0.0).sum().backward()
            opt.step(alive) if fused else opt.step()
            loss_sum += losses.detach() * len(y)
            correct += (logits.detach().argmax(2) == y).sum(0)
            seen += len(y)
            if t.nan_check and ((step + 1) % nan_check_every == 0 or step == len(sizes) - 1):
                found = torch.stack([bad_epoch, bad_step, bad_loss.double()]).tolist()  # one sync
                for g, (e, st, value) in enumerate(zip(*found)):
                    if e >= 0 and alive[g]:
                        alive[g] = False
                        runs[g].error = NonFiniteLossError(
                            f"training loss became {value} at epoch {int(e)}, step {int(st)} "
                            f"(lr {lr_at(members[g].cfg, int(e)):.3g}); lower train.lr or check the data")
                alive_t = torch.tensor(alive, device=device)
            if not any(alive):
                return runs

        live = [g for g in range(G) if alive[g]]
        stop = False
        if fused:
            val_logits = stacked_predict(model, [s.x_val for s in states], [s.norm for s in states],
                                         device, t.amp, forward_batch)
        else:
            val_logits = [batched_predict(make_predict(model, states[0].norm, device, t.amp), states[0].x_val,
                                          forward_batch)]
        loss_sums, corrects = loss_sum.tolist(), correct.tolist()
        for g in live:
            s = states[g]
            val_preds = val_logits[g].argmax(1)
            row = {
                "epoch": epoch,
                "lr": lr_at(s.cfg, epoch),
                "train_loss": loss_sums[g] / max(seen, 1),
                "train_accuracy": corrects[g] / max(seen, 1),
                "val_accuracy": float((val_preds == s.y_val).float().mean()) if len(s.y_val) else math.nan,
                "val_balanced_accuracy": balanced_accuracy(per_class_accuracy(val_preds, s.y_val,
                                                                              s.data.num_classes)),
                "seconds": time.perf_counter() - start,
            }
            s.rows.append(row)
            if members[g].report is not None and members[g].report(row) == STOP:
                stop = True
        if stop:  # a scheduler stopped the Tune trial: every member of it ends after this epoch
            break
    return runs
