"""Fused generators: G MUNITs of one architecture trained in one process as one stacked model.

On a GPU a paper-size MUNIT step at K49 size costs the same at batch 1 and batch 32 (13-20
steps/s on an H100, issue 14): launches and host work, not arithmetic. G generators stacked
run every layer once for all of them:

- `torch.func.stack_module_state` stacks the members' weights into tensors with a leading
  member dim (G, ...); `StackedMunits(fn, *args)` runs fn(munit, dis, *args) of `train.py`'s
  step for every member at once (`torch.func.vmap` over `functional_call`): member g's weights
  on member g's batch. The step itself is `git_ray.generative.train.munit_step`, unchanged;
- one Adam per network over the stacked tensors: Adam and its weight decay act element by
  element, so each member's update is its own (its moments are slices of the stacked ones);
- each member keeps its own data, class-balanced sampler, seed and sampling RNG (its draws are
  made exactly as alone, then stacked) and its `style_weight`. They share the architecture,
  image shape, batch size, lr, steps, checkpoint interval and their current step (`fuse_key`,
  and the same step: members resumed at different steps train in separate stacks, one after
  another, each from its own checkpoint).

Results equal separate `train_munit` runs up to float rounding (vmapped convolutions become
grouped convolutions or batched matmuls, which round differently; both tested in float64).
Checkpoints are each member's own, in `train_munit`'s format (the stacked weights and Adam
moments are copied back first), so resume, `git-ray verify` and the cache see no difference. A
member whose loss turns NaN / inf stops there (its checkpoint is not written again) while the
others go on.

On a CPU the members train one after another (`train_munit` each, `stacked=False`, the default
there): a CPU core is busy with one generator, and vmapped grouped convolutions are no faster.

On a GPU a stack is fast when the host keeps ahead of it (bench/bench_fused_generators.py, 64
paper-size generators on one H200, member-steps/s in total; docs/performance.md, "Fused
generators"):
- the draws reach the device from pinned memory (`train.to_device`): a copy from pageable memory
  waits for the GPU, so the host could not queue a step while the GPU ran the one before;
- `conv="matmul"` (the default on CUDA): each convolution as unfold + one matrix product, which
  `vmap` makes one batched matmul for the group (`_MatmulConv2d`), where "grouped" lets `vmap`
  make it a grouped convolution (cuDNN's kernels for G groups at batch 1): 246 -> 277;
- `cuda_graph=True` (the default on CUDA): the step captured once as a CUDA graph and replayed
  (`train.GraphedStep`): thousands of vmapped ops a step cost the host more than the GPU takes
  to run them: 277 -> 358 (at G = 16, 105 -> 298).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from git_ray.generative.networks import Munit
from git_ray.generative.train import MunitRun, StepCallback, to_device, train_munit, train_steps

# Generator config fields fused members may differ in; everything else (and the image shape) is shared.
MEMBER_FIELDS = ("seed", "style_weight", "cache")


def fuse_key(gcfg: Any, image_shape: tuple[Any, ...]) -> tuple:
    """Equal for generators that may train stacked: the config without MEMBER_FIELDS, and the
    shape of the images (channels and size, or what decides them, e.g. source and image_size)."""
    return (tuple(sorted(gcfg.model_dump(exclude=set(MEMBER_FIELDS)).items())), tuple(image_shape))


# How a stack computes its convolutions (see the module docstring).
CONVS = ("grouped", "matmul")


class _MatmulConv2d(nn.Conv2d):
    """An unpadded, undilated, ungrouped `nn.Conv2d` computed as unfold + one matrix product
    (MUNIT's convolutions are all of that kind: ReflectionPad2d does their padding). Under
    `vmap` with per-member weights it is one batched matmul per layer."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho, wo = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        cols = F.unfold(x, (kh, kw), stride=(sh, sw))  # (B, C*kh*kw, ho*wo)
        out = weight.flatten(1) @ cols  # (O, C*kh*kw) @ (B, C*kh*kw, L) -> (B, O, L)
        if bias is not None:
            out = out + bias[:, None]
        return out.unflatten(-1, (ho, wo))  # (B, O, ho, wo)


def _check_stack_options(conv: str, cuda_graph: bool, device: torch.device) -> None:
    """ValueError for a `conv` not in CONVS, or a CUDA graph asked for off CUDA."""
    if conv not in CONVS:
        raise ValueError(f"conv={conv!r}: choose one of {', '.join(CONVS)}")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device, not {device}")


def _with_matmul_convs(module: nn.Module) -> nn.Module:
    """Make every nn.Conv2d in `module` a `_MatmulConv2d` in place (same parameters and names)."""
    for name, m in module.named_modules():
        if type(m) is nn.Conv2d:
            if m.padding != (0, 0) or m.dilation != (1, 1) or m.groups != 1:
                raise ValueError(f"{name}: conv='matmul' takes unpadded, undilated, ungrouped convolutions")
            m.__class__ = _MatmulConv2d
    return module


class _Shell(nn.Module):
    """Runs fn(munit, dis, *args) as its forward, so `functional_call` can swap in a member's weights."""

    def __init__(self, munit: Munit, dis: nn.Module):
        super().__init__()
        self.munit, self.dis = munit, dis

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.munit, self.dis, *args)


def _stack_adam(stacked: torch.optim.Optimizer, members: list[torch.optim.Optimizer]) -> None:
    """Give `stacked` the members' Adam moments stacked along a new dim 0 (their shared step count)."""
    params = [o.param_groups[0]["params"] for o in members]
    for i, p in enumerate(stacked.param_groups[0]["params"]):
        states = [o.state.get(ps[i]) for o, ps in zip(members, params)]
        if not states[0]:  # never stepped (the members are at the same step: all fresh)
            continue
        step = states[0]["step"].to(p.device if stacked.defaults["capturable"] else "cpu", copy=True)
        stacked.state[p] = {k: step if k == "step" else torch.stack([s[k] for s in states])
                            for k in states[0]}


def _unstack_adam(stacked: torch.optim.Optimizer, members: list[torch.optim.Optimizer]) -> None:
    """Member g's Adam moments are slice g of the stacked ones; its lr the stacked lr."""
    for g, o in enumerate(members):
        for group in o.param_groups:
            group["lr"] = float(stacked.param_groups[0]["lr"])  # a float, also from a capturable Adam's tensor
        for p, q in zip(stacked.param_groups[0]["params"], o.param_groups[0]["params"]):
            state = stacked.state.get(p)
            if state:  # as a lone Adam keeps it: the step count on the CPU
                o.state[q] = {k: v.to("cpu", copy=True) if k == "step" else v[g].clone() for k, v in state.items()}


class StackedMunits:
    """G `MunitRun`s (same `fuse_key`, same step) as one stacked model: the `Nets` that
    `munit_step` and `train_steps` drive. The runs' own modules and optimizers are not trained;
    `unstack()` copies the stacked state back into them (before each checkpoint and at the end).
    `conv`: how the stack computes its convolutions, one of CONVS; `cuda_graph`: replay each step
    as one CUDA graph (`train.GraphedStep`; the stacked Adams are then capturable)."""

    def __init__(self, runs: list[MunitRun], conv: str = "grouped", cuda_graph: bool = False):
        if len({r.step for r in runs}) != 1:
            raise ValueError("stacked generators must be at the same step")
        r0 = runs[0]
        _check_stack_options(conv, cuda_graph, r0.device)
        self.runs, self.members, self.device, self.step = runs, len(runs), r0.device, r0.step
        g_params, g_buffers = stack_module_state([r.munit for r in runs])  # name -> (G, ...)
        d_params, d_buffers = stack_module_state([r.dis for r in runs])
        self.g_params, self.d_params = g_params, d_params
        self.params = {**{f"munit.{k}": v for k, v in g_params.items()}, **{f"dis.{k}": v for k, v in d_params.items()}}
        self.buffers = {**{f"munit.{k}": v for k, v in g_buffers.items()},
                        **{f"dis.{k}": v for k, v in d_buffers.items()}}
        # The module the members' weights are swapped into: its own weights are never used.
        self.shell = _Shell(copy.deepcopy(r0.munit), copy.deepcopy(r0.dis)).to("meta")
        if conv == "matmul":
            _with_matmul_convs(self.shell)
        self.cuda_graph = cuda_graph
        adam = {k: r0.opt_g.defaults[k] for k in ("lr", "betas", "weight_decay")}
        self.opt_g = torch.optim.Adam(list(g_params.values()), capturable=cuda_graph, **adam)
        self.opt_d = torch.optim.Adam(list(d_params.values()), capturable=cuda_graph, **adam)
        if cuda_graph:  # a graph reads lr and Adam's step count on the device, in place (`set_lr` fills lr)
            for opt in (self.opt_g, self.opt_d):
                opt.param_groups[0]["lr"] = torch.tensor(adam["lr"], device=self.device)
        _stack_adam(self.opt_g, [r.opt_g for r in runs])
        _stack_adam(self.opt_d, [r.opt_d for r in runs])
        dtype = next(iter(g_params.values())).dtype
        self.w_style = torch.tensor([r.w_style for r in runs], dtype=dtype, device=self.device)  # (G,)
        # Every member's training images in one tensor: one gather per step for all members.
        self.x_all = torch.cat([r.x_train for r in runs])  # (sum N_g, C, H, W)
        sizes = torch.tensor([len(r.x_train) for r in runs])
        self.offsets = torch.cumsum(sizes, 0) - sizes  # (G,) where member g's images start

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(munit, dis, *args) for every member: args and results with a leading (G, ...)."""
        def member(params: dict[str, Tensor], buffers: dict[str, Tensor], *a: Any) -> Any:
            return functional_call(self.shell, (params, buffers), (fn, *a))

        return vmap(member)(self.params, self.buffers, *args)

    def discriminator_trains(self, on: bool) -> None:
        for p in self.d_params.values():
            p.requires_grad_(on)

    def draw(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Each member's own draws (its sampler and RNG, as alone), stacked: x_a, x_b
        (G, B, C, H, W) in [-1, 1], z_a, z_b (G, B, S)."""
        idx, z = zip(*(r.draw_cpu() for r in self.runs))  # G x (2B,), G x (2B, S)
        idx = to_device(torch.stack(idx) + self.offsets[:, None], self.device)  # (G, 2B) into x_all
        z = to_device(torch.stack(z), self.device)  # (G, 2B, S)
        x = self.x_all[idx] * 2 - 1  # (G, 2B, C, H, W)
        x_a, x_b = x.chunk(2, dim=1)
        z_a, z_b = z.chunk(2, dim=1)
        return x_a, x_b, z_a, z_b

    @torch.no_grad()
    def unstack(self) -> None:
        """Copy the stacked weights and Adam state back into each run's own modules and optimizers."""
        for g, r in enumerate(self.runs):
            for stacked, module in ((self.g_params, r.munit), (self.d_params, r.dis)):
                for name, p in module.named_parameters():
                    p.copy_(stacked[name][g])
            r.step = self.step
        _unstack_adam(self.opt_g, [r.opt_g for r in self.runs])
        _unstack_adam(self.opt_d, [r.opt_d for r in self.runs])

    def save(self, alive: list[bool]) -> dict[int, Exception]:
        """Each live member's own checkpoint and samples; a member whose write fails stops alone."""
        self.unstack()
        failed: dict[int, Exception] = {}
        for g, r in enumerate(self.runs):
            if alive[g]:
                try:
                    r.save()
                except Exception as err:  # noqa: BLE001  (storage trouble of one member is that member's)
                    failed[g] = err
        return failed


def train_munits(members: list[tuple[Any, Any, str | None]], *, device: torch.device | str = "cpu",
                 stacked: bool | None = None, conv: str | None = None, cuda_graph: bool | None = None,
                 callback: StepCallback | None = None,
                 log: Callable[[str], None] = print, log_every: int | None = None) -> list[Munit | Exception]:
    """Train G generators, each (data, gcfg, checkpoint_path) exactly as `train_munit` would
    alone; return each member's generator (eval mode) or the error that stopped it (a
    non-finite loss, a checkpoint of another config, ...): one member's failure is its own.

    `stacked` (default: on CUDA) trains members of equal `fuse_key` and step as one stacked
    model (its convolutions computed as `conv` says, one of CONVS, default matmul on CUDA and
    grouped elsewhere; with `cuda_graph`, default on CUDA, each step replayed as one CUDA graph);
    otherwise members train one after another. `callback(step, losses)` runs after every step of
    every run (losses (G,) for a stack)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    stacked = cuda if stacked is None else stacked
    conv = conv or ("matmul" if cuda else "grouped")
    cuda_graph = cuda if cuda_graph is None else cuda_graph
    _check_stack_options(conv, cuda_graph and stacked, device)  # before any work
    out: list[Munit | Exception | None] = [None] * len(members)
    if not stacked:
        for i, (data, gcfg, path) in enumerate(members):
            try:
                out[i] = train_munit(data, gcfg, device=device, checkpoint_path=path, callback=callback, log=log,
                                     log_every=log_every)
            except Exception as err:  # noqa: BLE001
                out[i] = err
        return out  # type: ignore[return-value]

    runs: dict[int, MunitRun] = {}
    for i, (data, gcfg, path) in enumerate(members):
        try:
            runs[i] = MunitRun(data, gcfg, device=device, checkpoint_path=path, log=log)
        except Exception as err:  # noqa: BLE001
            out[i] = err
    parts: dict[tuple, list[int]] = {}
    for i, r in runs.items():
        shape = (r.data.channels, r.data.image_size, r.x_train.dtype)
        parts.setdefault((fuse_key(r.gcfg, shape), r.step), []).append(i)
    for part in parts.values():
        nets: Any = (runs[part[0]] if len(part) == 1
                     else StackedMunits([runs[i] for i in part], conv=conv, cuda_graph=cuda_graph))
        for r in (runs[i] for i in part):
            r.munit.train()
            r.dis.train()
        try:
            errors = train_steps(nets, runs[part[0]].gcfg, callback=callback, log=log, log_every=log_every)
        except Exception as err:  # noqa: BLE001  (the stack as a whole failed: each member with it)
            errors = [err] * len(part)
        if isinstance(nets, StackedMunits):
            nets.unstack()
        for i, err in zip(part, errors):
            out[i] = err if err is not None else runs[i].munit.eval()
    return out  # type: ignore[return-value]
