"""MUNIT training on a trial's long-tailed training set, with resumable self-describing checkpoints.

Both of MUNIT's domains are drawn, class-balanced, from the same pooled training images (scaled to
[-1, 1]), so the model learns to split what is shared by a class (content) from what varies
freely across all classes (style: the nuisance). One step, following MUNIT's cross-domain scheme:

    x_a, x_b -> (c_a, s_a), (c_b, s_b)            encode both batches
    recon     x_a ~ G(c_a, s_a), x_b ~ G(c_b, s_b)          image reconstruction (x10)
    translate x_ab = G(c_a, z_b), x_ba = G(c_b, z_a), z ~ N(0, I)
    re-encode x_ab -> (c_a, z_b), x_ba -> (c_b, z_a)        content (x1) and style (x1) recon
    LSGAN     D: real x_a, x_b vs x_ba, x_ab;  G: make D call x_ab, x_ba real (x1)

Adam (betas 0.5, 0.999, weight decay 1e-4), lr halved every 100k steps. A checkpoint (weights,
both optimizers, the sampling RNG, step, config, data fingerprint) is written atomically every
`checkpoint_every` steps; a run that finds one resumes from its step and, on CPU, ends bitwise
equal to an uninterrupted run with the same seed.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray import storage
from git_ray.generative.networks import Discriminator, Munit, build_munit
from git_ray.generative.samples import sample_grid_png

# MUNIT's loss weights (METHOD.md): no cycle or perceptual term.
W_ADV, W_IMAGE, W_STYLE, W_CONTENT = 1.0, 10.0, 1.0, 1.0
ADAM_BETAS = (0.5, 0.999)
WEIGHT_DECAY = 1e-4
LR_HALVING_STEPS = 100_000
CHECKPOINT_FORMAT = "git_ray.munit_checkpoint/1"

StepCallback = Callable[[int, dict[str, Tensor]], None]


class BalancedSampler:
    """Class-balanced draws of training indices: a class uniformly among those present, then an
    image of it uniformly. All draws come from one CPU torch.Generator, whose state the checkpoint
    keeps so that a resumed run draws the same batches."""

    def __init__(self, labels: Tensor, generator: torch.Generator):
        labels = labels.cpu()
        self.order = torch.argsort(labels, stable=True)  # indices grouped by class
        classes, counts = torch.unique(labels, return_counts=True)
        self.classes, self.counts = classes, counts
        self.starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
        self.generator = generator

    def labels_of(self, k: Tensor) -> Tensor:
        return self.classes[k]

    def __call__(self, n: int) -> Tensor:  # (n,) indices into the training set
        k = torch.randint(len(self.classes), (n,), generator=self.generator)
        u = torch.rand(n, generator=self.generator)
        pos = self.starts[k] + (u * self.counts[k]).long().clamp_max(self.counts[k] - 1)
        return self.order[pos]


def lr_at(base_lr: float, step: int) -> float:
    return base_lr * 0.5 ** (step // LR_HALVING_STEPS)


def _lsgan_d(real: Tensor, fake: Tensor) -> Tensor:
    return ((real - 1) ** 2).mean() + (fake ** 2).mean()


def _lsgan_g(fake: Tensor) -> Tensor:
    return ((fake - 1) ** 2).mean()


def munit_step(munit: Munit, dis: Discriminator, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, x_a: Tensor, x_b: Tensor, z_a: Tensor,
               z_b: Tensor, w_style: float = W_STYLE) -> dict[str, Tensor]:
    """One discriminator and one generator update. x_* (B, C, H, W) in [-1, 1]; z_* (B, style_dim)."""
    c_a, s_a = munit.encode(x_a)  # (B, D, h, w), (B, S)
    c_b, s_b = munit.encode(x_b)
    x_ab = munit.decode(c_a, z_b)  # a's content in a random style
    x_ba = munit.decode(c_b, z_a)

    # Discriminator first, on the detached translations (the generator graph stays intact).
    dis.requires_grad_(True)
    d_loss = _lsgan_d(dis(x_a), dis(x_ba.detach())) + _lsgan_d(dis(x_b), dis(x_ab.detach()))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # Generator against the updated discriminator; D's weights need no grads here.
    dis.requires_grad_(False)
    c_ab, z_b_rec = munit.encode(x_ab)
    c_ba, z_a_rec = munit.encode(x_ba)
    image = F.l1_loss(munit.decode(c_a, s_a), x_a) + F.l1_loss(munit.decode(c_b, s_b), x_b)
    style = F.l1_loss(z_b_rec, z_b) + F.l1_loss(z_a_rec, z_a)
    content = F.l1_loss(c_ab, c_a) + F.l1_loss(c_ba, c_b)
    adv = _lsgan_g(dis(x_ab)) + _lsgan_g(dis(x_ba))
    g_loss = W_ADV * adv + W_IMAGE * image + w_style * style + W_CONTENT * content
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    dis.requires_grad_(True)
    return {"d": d_loss.detach(), "g": g_loss.detach(), "adv": adv.detach(),
            "image": image.detach(), "style": style.detach(), "content": content.detach()}


def _checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_checkpoint(location: str, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(io.BytesIO(storage.read_bytes(location)), map_location=map_location,
                      weights_only=True)


def _identity(gcfg: Any) -> dict[str, Any]:
    # `cache` is where generators live, not what they are: two configs differing only there match.
    return gcfg.model_dump(exclude={"cache"})


def train_munit(data: Any, gcfg: Any, *, device: torch.device | str = "cpu",
                checkpoint_path: str | None = None, callback: StepCallback | None = None,
                log: Callable[[str], None] = print, log_every: int | None = None) -> Munit:
    """Train MUNIT on `data.x_train` (images in [0, 1]) for `gcfg.steps` steps; returns the
    generator in eval mode. With `checkpoint_path` (local path or URI) the run checkpoints every
    `gcfg.checkpoint_every` steps (and at the end), writes a sample grid beside it, and resumes
    from the checkpoint if one is there. `callback(step, losses)` runs after every step."""
    device = torch.device(device)
    rng = torch.Generator().manual_seed(gcfg.seed)
    munit, dis = build_munit(in_channels=data.channels, image_size=data.image_size, gcfg=gcfg,
                             generator=rng, device=device)
    opt_g = torch.optim.Adam(munit.parameters(), lr=gcfg.lr, betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY)
    opt_d = torch.optim.Adam(dis.parameters(), lr=gcfg.lr, betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY)
    sampler = BalancedSampler(data.y_train, rng)
    x_train = data.x_train.to(device)
    step = 0

    if checkpoint_path is not None and storage.exists(checkpoint_path):
        ck = load_checkpoint(checkpoint_path, map_location=device)
        if ck["config"] != _identity(gcfg) or ck["data_fingerprint"] != data.fingerprint:
            raise ValueError(f"{checkpoint_path} was written for another generator config or data set "
                             f"(config {ck['config']}, data {ck['data_fingerprint']}); delete it or "
                             "point the cache elsewhere")
        munit.load_state_dict(ck["munit"])
        dis.load_state_dict(ck["dis"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
        rng.set_state(ck["rng"])
        step = ck["step"]
        log(f"generator: resuming from {checkpoint_path} at step {step}/{gcfg.steps}")

    def save() -> None:
        state = {"format": CHECKPOINT_FORMAT, "config": _identity(gcfg), "spec": munit.spec,
                 "data_fingerprint": data.fingerprint, "step": step,
                 "munit": munit.state_dict(), "dis": dis.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng.get_state()}
        storage.write_bytes(checkpoint_path, _checkpoint_bytes(state))
        png = sample_grid_png(munit, data, seed=gcfg.seed, device=device)
        storage.write_bytes(storage.join(_parent(checkpoint_path), "samples.png"), png)
        munit.train()

    w_style = W_STYLE if gcfg.style_weight is None else gcfg.style_weight
    log_every = log_every or max(1, gcfg.steps // 10)
    munit.train()
    dis.train()
    t0 = time.perf_counter()
    start = step
    while step < gcfg.steps:
        for group in (*opt_g.param_groups, *opt_d.param_groups):
            group["lr"] = lr_at(gcfg.lr, step)
        idx = sampler(2 * gcfg.batch_size)  # (2B,) both domains from the same pool
        z = torch.randn(2 * gcfg.batch_size, gcfg.style_dim, generator=rng).to(device)  # (2B, S)
        x = x_train[idx.to(device)] * 2 - 1  # (2B, C, H, W) in [-1, 1]
        x_a, x_b = x.chunk(2)
        z_a, z_b = z.chunk(2)
        losses = munit_step(munit, dis, opt_g, opt_d, x_a, x_b, z_a, z_b, w_style=w_style)
        step += 1
        if checkpoint_path is not None and (step % gcfg.checkpoint_every == 0 or step == gcfg.steps):
            save()
        if step % log_every == 0 or step == gcfg.steps:
            rate = (step - start) / max(time.perf_counter() - t0, 1e-9)
            log(f"generator step {step}/{gcfg.steps} ({rate:.1f} it/s) "
                + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()))
        if callback is not None:
            callback(step, losses)
    return munit.eval()


def _parent(location: str) -> str:
    return location.rsplit("/", 1)[0] if storage.is_remote(location) else os.path.dirname(location)
