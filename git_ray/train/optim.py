"""SGD with momentum and weight decay, the classifier's optimiser, without `torch.optim`'s start-up cost.

`torch.optim.Optimizer.__init__` imports `torch._dynamo` (its methods are wrapped to keep the
compiler out), which costs 2 to 4 s of CPU in every fresh process. A Ray worker runs its first
trial in a fresh process, and a quickstart trial takes 4 to 5 s, so that import alone was up to
half of a worker's first trial. git_ray never compiles its classifier; this class does the same
arithmetic as `torch.optim.SGD(params, lr, momentum, weight_decay)` (dampening 0, no Nesterov),
in the same order, so the weights it produces are bit-identical (tested), with none of that cost.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class MomentumSGD:
    """p <- p - lr * b, with b <- momentum * b + (g + weight_decay * p) (b starts at the first
    step's gradient). `param_groups[0]["lr"]` may be changed between steps (the LR schedule)."""

    def __init__(self, params: Iterable[Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("MomentumSGD got no parameters that require a gradient")
        self.param_groups = [{"params": params, "lr": lr, "momentum": momentum, "weight_decay": weight_decay}]
        self._buffers: list[Tensor] | None = None  # one momentum buffer per parameter, after step 1

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        live = [(i, p) for i, p in enumerate(group["params"]) if p.grad is not None]
        if not live:
            return
        params = [p for _, p in live]
        first = self._buffers is None
        if first and group["momentum"]:
            self._buffers = [torch.zeros_like(p) for p in group["params"]]
        bufs = [self._buffers[i] for i, _ in live] if group["momentum"] else []
        momentum_update(params, [p.grad for p in params], bufs, first=first, lr=group["lr"],
                        momentum=group["momentum"], weight_decay=group["weight_decay"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()


@torch.no_grad()
def momentum_update(params: list[Tensor], grads: list[Tensor], bufs: list[Tensor], *, first: bool,
                    lr: float, momentum: float, weight_decay: float) -> None:
    """One SGD step in place on `params` (and the momentum buffers `bufs`, unused without
    momentum; on the `first` step they are set to the gradient). The one copy of this
    arithmetic: `MomentumSGD` and the fused trials' per-member optimiser
    (`git_ray.train.fused.MemberSGD`, on views of stacked tensors) both call it."""
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum:
        if first:
            for b, g in zip(bufs, grads):
                b.copy_(g)  # the first step's buffer is the gradient itself
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
        grads = bufs
    torch._foreach_add_(params, grads, alpha=-lr)
