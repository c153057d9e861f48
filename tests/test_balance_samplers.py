"""Every registered sampler: reproducible per (seed, epoch), valid indices, and its own rule."""
import pytest
import torch

from git_ray.registry import SAMPLERS

C, S1, B = 5, 2, 20
COUNTS = [200, 60, 20, 8, 2]


def labels(counts=COUNTS):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]


def build(name, y=None, seed=0, batch_size=B, s1=S1):
    y = labels() if y is None else y
    return SAMPLERS.build(name, labels=y, num_classes=int(y.max()) + 1, s1=s1,
                          batch_size=batch_size, seed=seed)


def freqs(y, idx):
    return torch.bincount(y[idx], minlength=C).double() / len(idx)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_reproducible_and_epochs_differ(name):
    y = labels()
    a, b = build(name, y), build(name, y)
    for epoch in (0, 1, S1, S1 + 1):
        ia = a.indices(epoch)
        assert ia.dtype == torch.long and ia.min() >= 0 and ia.max() < len(y)
        assert len(y) <= len(ia) < len(y) + B  # about one pass over the data
        assert torch.equal(ia, b.indices(epoch))  # same seed + epoch -> same indices
    # order of calls does not matter
    assert torch.equal(a.indices(S1 + 1), build(name, y).indices(S1 + 1))
    assert not torch.equal(a.indices(S1), a.indices(S1 + 1))
    assert not torch.equal(a.indices(0), a.indices(1))
    assert not torch.equal(a.indices(0), build(name, y, seed=1).indices(0))


def test_none_is_a_permutation():
    idx = build("none").indices(0)
    assert torch.equal(idx.sort().values, torch.arange(sum(COUNTS)))


@pytest.mark.parametrize("name", ["resample", "bbs"])
def test_balancing_moves_class_frequencies_toward_uniform(name):
    y = labels()
    before = freqs(y, build("none", y).indices(0))
    after = torch.stack([freqs(y, build(name, y).indices(e)) for e in range(5)]).mean(0)
    uniform = torch.full((C,), 1.0 / C, dtype=torch.float64)
    assert (after - uniform).abs().max() < 0.25 * (before - uniform).abs().max()
    assert (after - uniform).abs().max() < 0.03
    assert after[-1] > 5 * before[-1]  # the 2-image class is drawn far more often


def test_resample_covers_the_tail_by_replacement():
    y = labels()
    idx = build("resample", y).indices(0)
    tail = idx[y[idx] == C - 1]
    assert len(tail) > 2 * COUNTS[-1]  # with replacement, the 2 images repeat
    assert set(tail.tolist()) <= set(torch.nonzero(y == C - 1).flatten().tolist())


def test_drs_is_shuffling_before_s1_and_resampling_after():
    y = labels()
    drs, none, rs = build("drs", y), build("none", y), build("resample", y)
    for e in range(S1):
        assert torch.equal(drs.indices(e), none.indices(e))
    for e in (S1, S1 + 3):
        assert torch.equal(drs.indices(e), rs.indices(e))


@pytest.mark.parametrize("batch_size", [10, 20, 23, 3])
def test_bbs_batches_hold_equal_class_counts(batch_size):
    y = labels()
    idx = build("bbs", y, batch_size=batch_size).indices(0)
    assert len(idx) % batch_size == 0
    per_batch = torch.stack([torch.bincount(y[chunk], minlength=C)
                             for chunk in idx.view(-1, batch_size)])  # (nb, C)
    assert (per_batch.max(1).values - per_batch.min(1).values).max() <= 1
    assert (per_batch.sum(1) == batch_size).all()


def test_bbs_uses_every_image_of_a_class_before_repeating_one():
    y = labels()
    idx = build("bbs", y, batch_size=B).indices(0)
    for c in range(C):
        drawn = idx[y[idx] == c]
        n = min(len(drawn), COUNTS[c])
        assert len(set(drawn[:n].tolist())) == n


def test_bbs_shuffles_classes_within_a_batch():
    y = labels()
    idx = build("bbs", y, batch_size=B).indices(0).view(-1, B)
    first_slot = y[idx[:, 0]]
    assert len(set(first_slot.tolist())) > 1  # position in a batch does not fix the class


def test_bbs_skips_a_class_with_no_images():
    y = labels([30, 0, 10])
    idx = SAMPLERS.build("bbs", labels=y, num_classes=3, s1=0, batch_size=8, seed=0).indices(0)
    per_batch = torch.stack([torch.bincount(y[c], minlength=3) for c in idx.view(-1, 8)])
    assert (per_batch[:, 1] == 0).all() and (per_batch[:, 0] == 4).all()
