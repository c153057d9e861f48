"""Fused trials: G classifiers of one architecture trained as one stacked network.

On a GPU one K49-size ResNet-20 at batch 128 leaves most of the chip idle (launch-bound); G
of them side by side do G times the arithmetic for about the same number of launches. Every
layer of the members' networks becomes one layer G times as wide:

- a convolution (Cin -> Cout, groups k) becomes one of G*Cin -> G*Cout with groups G*k: member
  g reads input channels g*Cin..(g+1)*Cin and writes output channels g*Cout..(g+1)*Cout only;
- BatchNorm over C channels becomes BatchNorm over G*C channels: its statistics are per channel,
  so per member;
- channel-wise layers (ReLU, pooling) stay as they are; the parameter-free zero-pad shortcut
  pads each member's channels apart; flattening keeps member g's features contiguous;
- the heads stay the members' own modules (linear or cosine: members may differ), applied to
  member g's slice of the features.

Member g's batch enters as channels g*C..(g+1)*C of one (B, G*C, H, W) tensor; the output is
(B, G, K). No parameter is shared, so the sum of the members' losses gives each member its own
gradient, and `MemberSGD` steps each member with its own learning rate, momentum and weight
decay on views of the stacked tensors, with the arithmetic of `MomentumSGD`. Results equal
separate runs up to float rounding (grouped and plain convolutions round differently).

That is the GPU path. On a CPU, where oneDNN's grouped convolutions are slower than separate
ones, the stacked network runs the members' own networks one after another on their channels
instead (`grouped=False`, the default there): separate runs' arithmetic exactly, in one process.

`stack_classifiers(models)` builds the stacked network from G built (seeded) members;
`unstack_into(stacked)` copies the trained weights and BatchNorm statistics back into them, so
that evaluation runs each member's own network exactly as a lone trial would.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from git_ray.models.base import Classifier
from git_ray.models.resnet import ZeroPadShortcut
from git_ray.train.optim import momentum_update

# Layers that act on each channel alone (or have no channels): stacking leaves them as they are.
CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Flatten, nn.Identity, nn.Sequential)


class StackedZeroPad(nn.Module):
    """`ZeroPadShortcut` for G members: subsample, then pad each member's channels apart."""

    def __init__(self, members: int, pad: ZeroPadShortcut):
        super().__init__()
        self.members, self.stride, self.pad_lo, self.pad_hi = members, pad.stride, pad.pad_lo, pad.pad_hi

    def forward(self, x: Tensor) -> Tensor:  # (B, G*Cin, H, W) -> (B, G*Cout, H/s, W/s)
        x = x[:, :, :: self.stride, :: self.stride]
        b, gc, h, w = x.shape
        x = x.reshape(b, self.members, gc // self.members, h, w)  # (B, G, Cin, h, w)
        x = F.pad(x, (0, 0, 0, 0, self.pad_lo, self.pad_hi))  # (B, G, Cout, h, w)
        return x.reshape(b, -1, h, w)


def _stack_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    g = len(convs)
    out = nn.Conv2d(g * c.in_channels, g * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                    dilation=c.dilation, groups=g * c.groups, bias=c.bias is not None,
                    padding_mode=c.padding_mode, device=c.weight.device, dtype=c.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))  # (G*Cout, Cin/groups, k, k)
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _stack_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    out = nn.BatchNorm2d(len(bns) * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
                         track_running_stats=b.track_running_stats, device=b.running_mean.device,
                         dtype=b.running_mean.dtype)
    with torch.no_grad():
        for name, _ in list(out.named_parameters(recurse=False)) + list(out.named_buffers(recurse=False)):
            if name == "num_batches_tracked":
                out.num_batches_tracked.copy_(b.num_batches_tracked)
            else:
                getattr(out, name).copy_(torch.cat([getattr(m, name) for m in bns]))
    return out


class StackedClassifier(nn.Module):
    """G classifiers of one architecture as one network: (B, G*C, H, W) -> (B, G, K).

    `grouped`: one network G times as wide (grouped convolutions; the GPU path: one launch per
    layer for all members). Otherwise the members' own networks run one after another on their
    channels (the CPU path: oneDNN's grouped convolutions took 1.3x the time of G separate ones,
    measured at G = 4, width 16, 28x28, batch 128, 1 thread), which is the arithmetic of
    separate runs exactly, without their processes."""

    def __init__(self, models: list[Classifier], grouped: bool = True):
        super().__init__()
        if not models:
            raise ValueError("stack_classifiers needs at least one model")
        shapes = [({k: tuple(v.shape) for k, v in m.body.state_dict().items()}, m.feature_dim, m.num_classes)
                  for m in models]  # heads may differ (linear, cosine); bodies may not
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("cannot stack: the members' networks differ in layers or shapes "
                             "(fused trials need the same arch, width, input channels and classes)")
        self.members = len(models)
        self.feature_dim = models[0].feature_dim
        self.num_classes = models[0].num_classes
        self.grouped = grouped
        self._models = models  # grouped: not registered, the members keep their own modules
        self.pairs: list[tuple[nn.Module, list[nn.Module]]] = []
        if not grouped:
            self.member_nets = nn.ModuleList(models)
            return
        self.body = copy.deepcopy(models[0].body)
        # (stacked layer, the members' layers): what unstack_into copies back.
        bodies = [m.body for m in models]
        for name, layer in list(self.body.named_modules()):
            if not name:
                continue
            theirs = [b.get_submodule(name) for b in bodies]
            if any(type(t) is not type(layer) for t in theirs):
                raise ValueError(f"cannot stack: members differ at layer {name!r}")
            if isinstance(layer, nn.Conv2d):
                new: nn.Module = _stack_conv(theirs)
            elif isinstance(layer, nn.BatchNorm2d):
                new = _stack_bn(theirs)
            elif isinstance(layer, ZeroPadShortcut):
                new = StackedZeroPad(self.members, layer)
            elif isinstance(layer, CHANNELWISE) or not any(True for _ in layer.parameters(recurse=False)):
                continue  # containers (blocks) and channel-wise layers
            else:
                raise ValueError(f"cannot stack layer {name!r} of type {type(layer).__name__}")
            parent, _, leaf = name.rpartition(".")
            setattr(self.body.get_submodule(parent) if parent else self.body, leaf, new)
            if isinstance(new, (nn.Conv2d, nn.BatchNorm2d)):
                self.pairs.append((new, theirs))
        self.heads = nn.ModuleList([m.head for m in models])  # the members' own heads

    def forward(self, x: Tensor) -> Tensor:  # (B, G*C, H, W) -> (B, G, K)
        if not self.grouped:  # member g's own network on its channels
            return torch.stack([net(xg) for net, xg in zip(self.member_nets, x.chunk(self.members, dim=1))], dim=1)
        z = self.body(x)  # (B, G*D, h, w), or (B, G*D) for a body that flattens its own map
        z = z.mean(dim=(2, 3)) if z.dim() == 4 else z
        z = z.reshape(len(z), self.members, -1)  # (B, G, D): member g's features are contiguous
        return torch.stack([head(z[:, g]) for g, head in enumerate(self.heads)], dim=1)

    def member_slices(self) -> list[list[tuple[nn.Parameter, int, int]]]:
        """For each member, its parameters as (tensor, start, length) along dim 0."""
        if not self.grouped:
            return [[(p, 0, p.shape[0]) for p in net.parameters()] for net in self.member_nets]
        out: list[list[tuple[nn.Parameter, int, int]]] = [[] for _ in range(self.members)]
        for p in self.body.parameters():
            n = p.shape[0] // self.members  # every stacked parameter is G blocks along dim 0
            for g in range(self.members):
                out[g].append((p, g * n, n))
        for g, head in enumerate(self.heads):
            out[g].extend((p, 0, p.shape[0]) for p in head.parameters())
        return out

    @torch.no_grad()
    def unstack_into(self) -> list[Classifier]:
        """Copy the trained weights and BatchNorm statistics back into the members' networks
        (on this network's device and memory layout); return them."""
        g = self.members
        for stacked, theirs in self.pairs:
            for name, t in list(stacked.named_parameters(recurse=False)) + list(stacked.named_buffers(recurse=False)):
                for i, m in enumerate(theirs):
                    mine = getattr(m, name)
                    if name == "num_batches_tracked":
                        mine.copy_(t)
                        continue
                    n = t.shape[0] // g
                    mine.data = t[i * n:(i + 1) * n].detach().clone().to(memory_format=_layout(t))
        return self._models


def _layout(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def stack_classifiers(models: list[Classifier], grouped: bool | None = None) -> StackedClassifier:
    """One network for G members built alike (same arch, width, input shape); see the module
    docstring. Grouped (bodies copied into one wide network, heads shared) by default when the
    members are on a GPU, member by member (their own modules) on a CPU."""
    if grouped is None:
        grouped = bool(models) and next(models[0].parameters()).is_cuda
    return StackedClassifier(models, grouped=grouped)


@torch.no_grad()
def stacked_predict(model: StackedClassifier, xs: list[Tensor], norms: list, device: torch.device, amp: bool,
                    forward_batch: int) -> list[Tensor]:
    """Each member's logits (N_g, K) on its own images xs[g] (N_g, C, H, W), normalised by its
    own normaliser, in one stacked pass per `forward_batch` images. In eval mode images do not
    interact (BatchNorm uses its running statistics), so shorter inputs are padded with zeros and
    the padding's outputs dropped. Unscaled (the argmax is all validation needs)."""
    model.eval()
    n = max(len(x) for x in xs)
    if n == 0:
        return [x.new_zeros(0, model.num_classes) for x in xs]
    padded = [F.pad(norm(x.to(device)), (0, 0, 0, 0, 0, 0, 0, n - len(x))) for x, norm in zip(xs, norms)]
    out = []
    for i in range(0, n, forward_batch):
        chunk = torch.cat([p[i:i + forward_batch] for p in padded], dim=1)  # (b, G*C, H, W)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            out.append(model(chunk).float())  # (b, G, K)
    logits = torch.cat(out)  # (n, G, K)
    return [logits[: len(x), g] for g, x in enumerate(xs)]


class MemberSGD:
    """`MomentumSGD` per member of a `StackedClassifier`: `param_groups[g]` holds member g's
    lr (set between steps by the schedule), momentum and weight decay; `step(alive)` updates the
    members flagged alive, each on views of the stacked tensors (its dim-0 blocks)."""

    def __init__(self, model: StackedClassifier, *, lr: list[float], momentum: list[float],
                 weight_decay: list[float]):
        self.slices = model.member_slices()
        self.param_groups = [{"lr": a, "momentum": b, "weight_decay": c}
                             for a, b, c in zip(lr, momentum, weight_decay)]
        self.params = list(dict.fromkeys(p for member in self.slices for p, _, _ in member))
        self._buffers: dict[int, Tensor] = {}  # id(param) -> stacked momentum buffer
        self._started = [False] * model.members

    @torch.no_grad()
    def step(self, alive: list[bool] | None = None) -> None:
        settings = {(p["lr"], p["momentum"], p["weight_decay"]) for p in self.param_groups}
        if (len(settings) == 1 and (alive is None or all(alive)) and len(set(self._started)) == 1
                and all(p.grad is not None for p in self.params)):
            self._step_all(*settings.pop())
        else:
            self._step_members(alive)

    def _step_all(self, lr: float, momentum: float, weight_decay: float) -> None:
        """Every member steps alike (the usual case within a sweep group): one update of the
        stacked tensors, the same arithmetic element by element with G times fewer launches."""
        bufs = [self._buffers.setdefault(id(p), torch.zeros_like(p)) for p in self.params] if momentum else []
        momentum_update(self.params, [p.grad for p in self.params], bufs, first=not self._started[0], lr=lr,
                        momentum=momentum, weight_decay=weight_decay)
        self._started = [True] * len(self._started)

    def _step_members(self, alive: list[bool] | None) -> None:
        for g, (member, group) in enumerate(zip(self.slices, self.param_groups)):
            if (alive is not None and not alive[g]) or member[0][0].grad is None:
                continue
            params = [p.narrow(0, s, n) for p, s, n in member]
            grads = [p.grad.narrow(0, s, n) for p, s, n in member]
            bufs = []
            if group["momentum"]:
                bufs = [self._buffers.setdefault(id(p), torch.zeros_like(p)).narrow(0, s, n) for p, s, n in member]
            momentum_update(params, grads, bufs, first=not self._started[g], lr=group["lr"],
                            momentum=group["momentum"], weight_decay=group["weight_decay"])
            self._started[g] = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
