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
equal to an uninterrupted run with the same seed. Losses are checked for NaN / inf on the device
and read every 50 steps and before every checkpoint: a generator whose loss is not finite stops
with `NonFiniteLossError` and writes no checkpoint past its last finite one.

`munit_step` and `train_steps` (the loop) serve one generator (`MunitRun`) and G generators
stacked into one (`git_ray.generative.fused.StackedMunits`) alike: the step asks its `nets` to
run each piece of the loss on the networks, and a stacked `nets` runs it for every member at once.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from git_ray import storage
from git_ray.generative.networks import Discriminator, Munit, build_munit
from git_ray.generative.samples import sample_grid_png
from git_ray.train.loop import NonFiniteLossError

# MUNIT's loss weights (METHOD.md): no cycle or perceptual term.
W_ADV, W_IMAGE, W_STYLE, W_CONTENT = 1.0, 10.0, 1.0, 1.0
ADAM_BETAS = (0.5, 0.999)
WEIGHT_DECAY = 1e-4
LR_HALVING_STEPS = 100_000
CHECKPOINT_FORMAT = "git_ray.munit_checkpoint/1"
NAN_CHECK_EVERY = 50  # steps between reads of the on-device finite-loss flags (a host sync each)

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


# ---------------------------------------------------------------------------------------------
# The step: three pieces of one generator's loss, and the update that strings them together


def translations(munit: Munit, dis: Discriminator, x_a: Tensor, x_b: Tensor, z_a: Tensor,
                 z_b: Tensor) -> tuple[Tensor, ...]:
    """Both batches encoded, and each one's content decoded in the other's random style:
    c_a, c_b (B, D, h, w); s_a, s_b (B, S); x_ab, x_ba (B, C, H, W)."""
    c_a, s_a = munit.encode(x_a)
    c_b, s_b = munit.encode(x_b)
    x_ab = munit.decode(c_a, z_b)  # a's content in a random style
    x_ba = munit.decode(c_b, z_a)
    return c_a, s_a, c_b, s_b, x_ab, x_ba


def discriminator_loss(munit: Munit, dis: Discriminator, x_a: Tensor, x_b: Tensor, x_ab: Tensor,
                       x_ba: Tensor) -> Tensor:
    """LSGAN: real x_a, x_b against the (detached) translations. A scalar."""
    return _lsgan_d(dis(x_a), dis(x_ba)) + _lsgan_d(dis(x_b), dis(x_ab))


def generator_losses(munit: Munit, dis: Discriminator, x_a: Tensor, x_b: Tensor, z_a: Tensor, z_b: Tensor,
                     c_a: Tensor, s_a: Tensor, c_b: Tensor, s_b: Tensor, x_ab: Tensor, x_ba: Tensor,
                     w_style: float | Tensor) -> dict[str, Tensor]:
    """The generator's weighted loss `g` and its terms (scalars), against the updated D."""
    c_ab, z_b_rec = munit.encode(x_ab)
    c_ba, z_a_rec = munit.encode(x_ba)
    image = F.l1_loss(munit.decode(c_a, s_a), x_a) + F.l1_loss(munit.decode(c_b, s_b), x_b)
    style = F.l1_loss(z_b_rec, z_b) + F.l1_loss(z_a_rec, z_a)
    content = F.l1_loss(c_ab, c_a) + F.l1_loss(c_ba, c_b)
    adv = _lsgan_g(dis(x_ab)) + _lsgan_g(dis(x_ba))
    g_loss = W_ADV * adv + W_IMAGE * image + w_style * style + W_CONTENT * content
    return {"g": g_loss, "adv": adv, "image": image, "style": style, "content": content}


class Nets(Protocol):
    """What `munit_step` and `train_steps` need: one generator (`MunitRun`) or G stacked
    (`git_ray.generative.fused.StackedMunits`)."""

    members: int
    step: int
    device: torch.device
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    w_style: float | Tensor
    cuda_graph: bool  # replay the step as one CUDA graph (`GraphedStep`; needs capturable optimizers)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any: ...
    def discriminator_trains(self, on: bool) -> None: ...
    def draw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]: ...
    def save(self, alive: list[bool]) -> dict[int, Exception]: ...


def munit_step(nets: Nets, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, x_a: Tensor,
               x_b: Tensor, z_a: Tensor, z_b: Tensor, w_style: float | Tensor = W_STYLE) -> dict[str, Tensor]:
    """One discriminator and one generator update. x_* (B, C, H, W) in [-1, 1]; z_* (B, style_dim).

    `nets(fn, *args)` runs fn(munit, dis, *args). For G stacked generators every argument and
    result carries a leading member dim (G, ...) and each loss is (G,): members share no
    parameter, so the gradient of the sum is each member's own."""
    c_a, s_a, c_b, s_b, x_ab, x_ba = nets(translations, x_a, x_b, z_a, z_b)

    # Discriminator first, on the detached translations (the generator graph stays intact).
    nets.discriminator_trains(True)
    d_loss = nets(discriminator_loss, x_a, x_b, x_ab.detach(), x_ba.detach())
    opt_d.zero_grad(set_to_none=True)
    d_loss.sum().backward()
    opt_d.step()

    # Generator against the updated discriminator; D's weights need no grads here.
    nets.discriminator_trains(False)
    losses = nets(generator_losses, x_a, x_b, z_a, z_b, c_a, s_a, c_b, s_b, x_ab, x_ba, w_style)
    opt_g.zero_grad(set_to_none=True)
    losses["g"].sum().backward()
    opt_g.step()
    nets.discriminator_trains(True)
    return {"d": d_loss.detach(), **{k: v.detach() for k, v in losses.items()}}


def eager_step(nets: Nets, draws: Sequence[Tensor] | None = None) -> dict[str, Tensor]:
    """One `munit_step` on `draws` (x_a, x_b, z_a, z_b; default: the next draws)."""
    return munit_step(nets, nets.opt_g, nets.opt_d, *(nets.draw() if draws is None else draws),
                      w_style=nets.w_style)


class GraphedStep:
    """`munit_step` captured once as a CUDA graph and replayed every step after: the host then
    queues one graph launch a step instead of the step's thousands of kernels (a stacked step is
    host-bound: every vmapped op pays Python and dispatch time). Each step's draws are copied
    into fixed input tensors first; the first `warmup` steps run eagerly on a side stream (lazy
    initialisation, cuDNN's autotuning, Adam's state), as CUDA graph capture requires. The
    optimizers must be capturable, with their lr a tensor (`set_lr` fills it)."""

    def __init__(self, warmup: int = 3):
        self.warmup, self.eager_steps = warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[Tensor] = []
        self.losses: dict[str, Tensor] = {}

    def __call__(self, nets: Nets) -> dict[str, Tensor]:
        draws = nets.draw()
        if not self.inputs:
            self.inputs = [d.clone() for d in draws]
        for fixed, d in zip(self.inputs, draws):
            fixed.copy_(d)
        if self.eager_steps < self.warmup:
            side, main = torch.cuda.Stream(nets.device), torch.cuda.current_stream(nets.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                losses = eager_step(nets, self.inputs)
            main.wait_stream(side)
            self.eager_steps += 1
            return losses
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # records the step's kernels; runs none of them
                self.losses = eager_step(nets, self.inputs)
        self.graph.replay()
        return {k: v.clone() for k, v in self.losses.items()}  # the next replay overwrites them


# ---------------------------------------------------------------------------------------------
# One generator's training state, checkpoints


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A step's host-drawn tensor on the device without a host sync: a plain copy from pageable
    memory waits for the GPU to finish the work queued before it, so the host could not queue
    step k+1 while the GPU runs step k. From pinned memory the copy is queued like a kernel."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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


class MunitRun:
    """One generator's training: its networks, Adam optimizers, sampling RNG and sampler, its
    training images on the device and its step, resumed from `checkpoint_path` when one is there.
    It is also the `Nets` of a lone run: `run(fn, *args)` is fn(munit, dis, *args)."""

    members = 1
    cuda_graph = False

    def __init__(self, data: Any, gcfg: Any, *, device: torch.device | str = "cpu",
                 checkpoint_path: str | None = None, log: Callable[[str], None] = print):
        self.data, self.gcfg, self.device = data, gcfg, torch.device(device)
        self.checkpoint_path = checkpoint_path
        self.rng = torch.Generator().manual_seed(gcfg.seed)
        self.munit, self.dis = build_munit(in_channels=data.channels, image_size=data.image_size, gcfg=gcfg,
                                           generator=self.rng, device=self.device)
        adam = dict(lr=gcfg.lr, betas=ADAM_BETAS, weight_decay=WEIGHT_DECAY)
        self.opt_g = torch.optim.Adam(self.munit.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.dis.parameters(), **adam)
        self.sampler = BalancedSampler(data.y_train, self.rng)
        self.x_train = data.x_train.to(self.device)  # (N, C, H, W) in [0, 1]
        self.w_style = W_STYLE if gcfg.style_weight is None else gcfg.style_weight
        self.step = 0
        if checkpoint_path is not None and storage.exists(checkpoint_path):
            self._resume(log)

    def _resume(self, log: Callable[[str], None]) -> None:
        ck = load_checkpoint(self.checkpoint_path, map_location=self.device)
        if ck["config"] != _identity(self.gcfg) or ck["data_fingerprint"] != self.data.fingerprint:
            raise ValueError(f"{self.checkpoint_path} was written for another generator config or data set "
                             f"(config {ck['config']}, data {ck['data_fingerprint']}); delete it or "
                             "point the cache elsewhere")
        self.munit.load_state_dict(ck["munit"])
        self.dis.load_state_dict(ck["dis"])
        self.opt_g.load_state_dict(ck["opt_g"])
        self.opt_d.load_state_dict(ck["opt_d"])
        self.rng.set_state(ck["rng"])
        self.step = ck["step"]
        log(f"generator: resuming from {self.checkpoint_path} at step {self.step}/{self.gcfg.steps}")

    # -- Nets ------------------------------------------------------------------------------------
    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.munit, self.dis, *args)

    def discriminator_trains(self, on: bool) -> None:
        self.dis.requires_grad_(on)

    def draw_cpu(self) -> tuple[Tensor, Tensor]:
        """The next batch's draws from this run's RNG: indices (2B,) and style codes (2B, S), on the CPU."""
        idx = self.sampler(2 * self.gcfg.batch_size)  # both domains from the same pool
        z = torch.randn(2 * self.gcfg.batch_size, self.gcfg.style_dim, generator=self.rng)
        return idx, z

    def draw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x_a, x_b (B, C, H, W) in [-1, 1] and z_a, z_b (B, S) on the device."""
        idx, z = self.draw_cpu()
        z = to_device(z, self.device)  # (2B, S)
        x = self.x_train[to_device(idx, self.device)] * 2 - 1  # (2B, C, H, W) in [-1, 1]
        x_a, x_b = x.chunk(2)
        z_a, z_b = z.chunk(2)
        return x_a, x_b, z_a, z_b

    def save(self, alive: list[bool] | None = None) -> dict[int, Exception]:
        """Write the checkpoint and a sample grid beside it (nothing without a checkpoint path)."""
        if self.checkpoint_path is None or (alive is not None and not alive[0]):
            return {}
        state = {"format": CHECKPOINT_FORMAT, "config": _identity(self.gcfg), "spec": self.munit.spec,
                 "data_fingerprint": self.data.fingerprint, "step": self.step,
                 "munit": self.munit.state_dict(), "dis": self.dis.state_dict(),
                 "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state()}
        storage.write_bytes(self.checkpoint_path, _checkpoint_bytes(state))
        png = sample_grid_png(self.munit, self.data, seed=self.gcfg.seed, device=self.device)
        storage.write_bytes(storage.join(_parent(self.checkpoint_path), "samples.png"), png)
        self.munit.train()
        return {}


# ---------------------------------------------------------------------------------------------
# The loop


def set_lr(lr: float, *optimizers: torch.optim.Optimizer) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            if isinstance(group["lr"], Tensor):  # a capturable optimizer's: a graph reads it in place
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr


def train_steps(nets: Nets, gcfg: Any, *, callback: StepCallback | None = None,
                log: Callable[[str], None] = print, log_every: int | None = None,
                nan_check_every: int = NAN_CHECK_EVERY) -> list[NonFiniteLossError | Exception | None]:
    """Train `nets` from its step to `gcfg.steps`: the lr schedule, each member's own draws, one
    `munit_step` (replayed as a CUDA graph where `nets.cuda_graph`), checkpoints every
    `gcfg.checkpoint_every` steps and at the end, a log line every `log_every` steps (default 10%
    of training), `callback(step, losses)` after every step.
    Returns each member's error (a non-finite loss, or a failed checkpoint write of a stacked
    member), None for members that finished; a stopped member writes no further checkpoint and
    the others go on."""
    G = nets.members
    if nets.device.type == "cuda":  # fixed shapes for thousands of steps: cuDNN picks its kernels once
        torch.backends.cudnn.benchmark = True  # (16 stacked paper-size generators on an H100: 1.15x)
        # float32 matrix products in TF32, as cuDNN's convolutions are by default: a stack's
        # convolutions are matrix products (fused.CONVS)
        torch.set_float32_matmul_precision("high")
    alive, errors = [True] * G, [None] * G
    bad_step = torch.full((G,), -1, dtype=torch.long, device=nets.device)  # (G,) first non-finite step
    log_every = log_every or max(1, gcfg.steps // 10)
    every = max(1, nan_check_every)
    t0, start = time.perf_counter(), nets.step
    step = GraphedStep() if nets.cuda_graph else eager_step
    while nets.step < gcfg.steps and any(alive):
        set_lr(lr_at(gcfg.lr, nets.step), nets.opt_g, nets.opt_d)
        losses = step(nets)
        finite = torch.isfinite(losses["d"] + losses["g"]).reshape(G)  # (G,), on the device
        bad_step = torch.where(~finite & (bad_step < 0), nets.step, bad_step)
        nets.step += 1
        checkpoint = nets.step % gcfg.checkpoint_every == 0 or nets.step == gcfg.steps
        if checkpoint or nets.step % every == 0:  # one host sync
            for g, s in enumerate(bad_step.tolist()):
                if s >= 0 and alive[g]:
                    alive[g] = False
                    errors[g] = NonFiniteLossError(
                        f"generator loss became non-finite at step {s} (lr {lr_at(gcfg.lr, s):.3g}); lower "
                        "generator.lr or check the data")
        if checkpoint:
            for g, err in nets.save(alive).items():
                alive[g], errors[g] = False, err
        if nets.step % log_every == 0 or nets.step == gcfg.steps:
            rate = (nets.step - start) / max(time.perf_counter() - t0, 1e-9)
            live = torch.tensor([g for g in range(G) if alive[g]], dtype=torch.long)
            mean = {k: float(v.reshape(G)[live.to(v.device)].float().mean()) if len(live) else float("nan")
                    for k, v in losses.items()}
            log(f"generator step {nets.step}/{gcfg.steps} ({rate:.1f} it/s{f', {G} fused' if G > 1 else ''}) "
                + " ".join(f"{k}={v:.3f}" for k, v in mean.items()))
        if callback is not None:
            callback(nets.step, losses)
    return errors


def train_munit(data: Any, gcfg: Any, *, device: torch.device | str = "cpu",
                checkpoint_path: str | None = None, callback: StepCallback | None = None,
                log: Callable[[str], None] = print, log_every: int | None = None) -> Munit:
    """Train MUNIT on `data.x_train` (images in [0, 1]) for `gcfg.steps` steps; returns the
    generator in eval mode. With `checkpoint_path` (local path or URI) the run checkpoints every
    `gcfg.checkpoint_every` steps (and at the end), writes a sample grid beside it, and resumes
    from the checkpoint if one is there. `callback(step, losses)` runs after every step. A loss
    that is not finite raises `NonFiniteLossError`."""
    run = MunitRun(data, gcfg, device=device, checkpoint_path=checkpoint_path, log=log)
    run.munit.train()
    run.dis.train()
    (error,) = train_steps(run, gcfg, callback=callback, log=log, log_every=log_every)
    if error is not None:
        raise error
    return run.munit.eval()


def _parent(location: str) -> str:
    return location.rsplit("/", 1)[0] if storage.is_remote(location) else os.path.dirname(location)
