"""Epoch samplers: none, resample, drs, bbs.

`SAMPLERS.build(name, labels=Tensor(N,), num_classes=int, s1=int, batch_size=int, seed=int)`
returns an object whose `indices(epoch)` is one epoch's ordered index array (a CPU LongTensor);
consecutive chunks of batch_size are the batches. Each epoch draws from its own
torch.Generator seeded from (seed, epoch): epochs differ, and the same (seed, epoch) always gives
the same indices, whatever happened before (so a resumed run sees the same batches).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from git_ray.registry import SAMPLERS


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch); SeedSequence mixes the pair so nearby seeds decorrelate."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Sampler:
    """Base: holds labels (CPU) and class counts; subclasses define `indices(epoch)`."""

    def __init__(self, labels: Tensor, num_classes: int, s1: int, batch_size: int, seed: int):
        self.labels = torch.as_tensor(labels).detach().cpu().long()  # (N,)
        self.num_classes = num_classes
        self.s1, self.batch_size, self.seed = s1, batch_size, seed
        self.counts = torch.bincount(self.labels, minlength=num_classes)  # (C,)

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, epoch: int) -> Tensor:
        raise NotImplementedError


class ShuffleSampler(Sampler):
    """ERM: every image once per epoch, in a fresh random order."""

    def indices(self, epoch: int) -> Tensor:
        return torch.randperm(len(self.labels), generator=epoch_generator(self.seed, epoch))


class ResampleSampler(Sampler):
    """N draws with replacement, image i with probability ∝ 1 / n_{y_i}: classes equally likely."""

    def indices(self, epoch: int) -> Tensor:
        p = 1.0 / self.counts.double()[self.labels]  # (N,)
        g = epoch_generator(self.seed, epoch)
        return torch.multinomial(p, len(self.labels), replacement=True, generator=g)


class DelayedResampleSampler(Sampler):
    """DRS: shuffling before epoch s1, class-balanced resampling from epoch s1 on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._before = ShuffleSampler(*args, **kwargs)
        self._after = ResampleSampler(*args, **kwargs)

    def indices(self, epoch: int) -> Tensor:
        return (self._before if epoch < self.s1 else self._after).indices(epoch)


class BalancedBatchSampler(Sampler):
    """BBS: each batch of batch_size holds B // C images of every class, and one more of
    B % C classes picked at random per batch, so class counts in a batch differ by at most one.

    Within a class, images come from successive random permutations of that class (each image
    of a small class is reused before any is reused twice). Each batch is shuffled so that
    position in the batch says nothing about the class (GIT replaces the batch's tail).
    The epoch has ceil(N / batch_size) full batches.
    """

    def indices(self, epoch: int) -> Tensor:
        g = epoch_generator(self.seed, epoch)
        present = torch.nonzero(self.counts > 0).flatten()  # (K,) classes that can be drawn
        k, bs = len(present), self.batch_size
        nb = math.ceil(len(self.labels) / bs)
        base, extra = divmod(bs, k)
        # Per batch, which classes get the extra image: the first `extra` of a random order.
        order = torch.rand(nb, k, generator=g).argsort(dim=1)  # (nb, K)
        per_batch = torch.full((nb, k), base, dtype=torch.long)
        per_batch.scatter_add_(1, order[:, :extra], torch.ones(nb, extra, dtype=torch.long))
        # Slot labels, batch by batch (row-major), then shuffled within each batch.
        slots = torch.repeat_interleave(present.repeat(nb), per_batch.flatten()).view(nb, bs)
        slots = slots.gather(1, torch.rand(nb, bs, generator=g).argsort(dim=1)).flatten()
        out = torch.empty(nb * bs, dtype=torch.long)
        for c in present.tolist():
            where = torch.nonzero(slots == c).flatten()  # (T_c,) in batch order
            out[where] = self._class_stream(c, len(where), g)
        return out

    def _class_stream(self, c: int, length: int, g: torch.Generator) -> Tensor:
        members = torch.nonzero(self.labels == c).flatten()  # (n_c,)
        reps = math.ceil(length / len(members))
        perms = [members[torch.randperm(len(members), generator=g)] for _ in range(reps)]
        return torch.cat(perms)[:length]


def _register(name: str, cls: type[Sampler]) -> None:
    @SAMPLERS.register(name)
    def build(*, labels: Tensor, num_classes: int, s1: int, batch_size: int, seed: int) -> Sampler:
        return cls(labels, num_classes, s1, batch_size, seed)

    build.__doc__ = cls.__doc__


for _name, _cls in {"none": ShuffleSampler, "resample": ResampleSampler,
                    "drs": DelayedResampleSampler, "bbs": BalancedBatchSampler}.items():
    _register(_name, _cls)
