"""Every registered class-weight schedule: shape, normalisation, ordering and the DRW switch."""
import pytest
import torch

from git_ray.config import BalanceConfig
from git_ray.registry import CLASS_WEIGHTS

COUNTS = torch.tensor([4800, 900, 120, 30, 5])
S1 = 3


def build(name, counts=COUNTS, **cfg):
    return CLASS_WEIGHTS.build(name, class_counts=counts, cfg=BalanceConfig(**cfg), s1=S1)


@pytest.mark.parametrize("name", CLASS_WEIGHTS.names())
def test_each_schedule_gives_none_or_normalised_decreasing_weights(name):
    cw = build(name)
    for epoch in range(6):
        w = cw.for_epoch(epoch)
        if w is None:
            continue
        assert w.shape == (5,) and torch.isfinite(w).all() and (w > 0).all()
        assert w.sum().item() == pytest.approx(5.0, rel=1e-5)
        assert torch.all(w[1:] > w[:-1])  # smaller class, larger weight


def test_none_never_weights():
    assert all(build("none").for_epoch(e) is None for e in range(10))


def test_reweight_is_effective_number_from_the_start():
    w = build("reweight", reweight_beta=0.999).for_epoch(0)
    raw = (1 - 0.999) / (1 - 0.999 ** COUNTS.double())
    assert torch.allclose(w.double(), raw * 5 / raw.sum(), rtol=1e-5)


def test_drw_switches_on_at_s1():
    drw, rw = build("drw"), build("reweight")
    assert all(drw.for_epoch(e) is None for e in range(S1))
    for e in (S1, S1 + 5):
        assert torch.equal(drw.for_epoch(e), rw.for_epoch(e))


def test_beta_near_one_approaches_inverse_frequency():
    w = build("reweight", reweight_beta=1 - 1e-9).for_epoch(0)
    inv = 1.0 / COUNTS.double()
    assert torch.allclose(w.double(), inv * 5 / inv.sum(), rtol=1e-3)


def test_empty_class_stays_finite():
    w = build("reweight", counts=torch.tensor([10, 0, 3])).for_epoch(0)
    assert torch.isfinite(w).all()
