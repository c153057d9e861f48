"""Every registered loss: finite, differentiable, weighted like torch's CE, and its own rule."""
import pytest
import torch
import torch.nn.functional as F

from git_ray.config import BalanceConfig
from git_ray.registry import LOSSES

COUNTS = torch.tensor([500, 100, 20, 5])


def batch(seed=0, n=32, c=4, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(n, c, generator=g) * 2 - 1) * scale  # in [-1, 1]: valid cosines too
    return logits, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("weighted", [False, True])
def test_finite_and_differentiable(name, weighted):
    loss_fn = LOSSES.build(name, class_counts=COUNTS, cfg=BalanceConfig())
    logits, y = batch()
    logits.requires_grad_(True)
    weight = torch.tensor([0.1, 0.5, 1.4, 2.0]) if weighted else None
    loss = loss_fn(logits, y, weight)
    assert loss.shape == () and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES.names())
def test_weights_apply_like_weighted_cross_entropy(name):
    loss_fn = LOSSES.build(name, class_counts=COUNTS, cfg=BalanceConfig())
    logits, y = batch(1)
    w = torch.tensor([0.2, 0.6, 1.2, 2.0])
    per_sample = torch.stack([loss_fn(logits[i:i + 1], y[i:i + 1]) for i in range(len(y))])
    expected = (w[y] * per_sample).sum() / w[y].sum()
    assert torch.allclose(loss_fn(logits, y, w), expected, atol=1e-5)
    assert not torch.allclose(loss_fn(logits, y, w), loss_fn(logits, y), atol=1e-4)
    # a constant weight vector changes nothing (the weighted mean is normalised)
    assert torch.allclose(loss_fn(logits, y, torch.full((4,), 3.0)), loss_fn(logits, y), atol=1e-6)


def test_ce_is_torch_cross_entropy():
    loss_fn = LOSSES.build("ce", class_counts=COUNTS, cfg=BalanceConfig())
    logits, y = batch(2, scale=5.0)
    w = torch.tensor([0.2, 0.6, 1.2, 2.0])
    assert torch.allclose(loss_fn(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(loss_fn(logits, y, w), F.cross_entropy(logits, y, weight=w))


def test_focal_gamma_zero_is_ce_and_gamma_down_weights_easy_examples():
    logits, y = batch(3, scale=5.0)
    ce = LOSSES.build("ce", class_counts=COUNTS, cfg=BalanceConfig())
    f0 = LOSSES.build("focal", class_counts=COUNTS, cfg=BalanceConfig(focal_gamma=0.0))
    f2 = LOSSES.build("focal", class_counts=COUNTS, cfg=BalanceConfig(focal_gamma=2.0))
    assert torch.allclose(f0(logits, y), ce(logits, y), atol=1e-6)
    easy = F.one_hot(y, 4).float() * 10.0  # confidently right
    assert f2(easy, y) < 1e-3 * ce(easy, y)


def test_ldam_margins():
    cfg = BalanceConfig(ldam_max_margin=0.5, ldam_scale=30.0)
    loss_fn = LOSSES.build("ldam", class_counts=COUNTS, cfg=cfg)
    m = loss_fn.margins
    assert m.argmax() == COUNTS.argmin() and m.max() == pytest.approx(0.5)
    assert torch.all(m[:-1] < m[1:])  # counts decrease along COUNTS, so margins grow
    assert torch.allclose(m / m[0], (COUNTS.float() / COUNTS[0]) ** -0.25)
    # the loss is CE on s * (z - m_y at the true class)
    logits, y = batch(4)
    z = logits - F.one_hot(y, 4) * m[y][:, None]
    assert torch.allclose(loss_fn(logits, y), F.cross_entropy(30.0 * z, y), atol=1e-5)


def test_ldam_margin_makes_the_loss_larger_than_scaled_ce():
    cfg = BalanceConfig()
    logits, y = batch(5)
    ldam = LOSSES.build("ldam", class_counts=COUNTS, cfg=cfg)
    assert ldam(logits, y) > F.cross_entropy(cfg.ldam_scale * logits, y)


def test_balanced_softmax_is_ce_when_balanced_and_differs_when_not():
    logits, y = batch(6, scale=3.0)
    ce = LOSSES.build("ce", class_counts=COUNTS, cfg=BalanceConfig())
    flat = LOSSES.build("balanced_softmax", class_counts=torch.full((4,), 50), cfg=BalanceConfig())
    skew = LOSSES.build("balanced_softmax", class_counts=COUNTS, cfg=BalanceConfig())
    assert torch.allclose(flat(logits, y), ce(logits, y), atol=1e-6)
    assert not torch.allclose(skew(logits, y), ce(logits, y), atol=1e-3)
    # the prior shift: a tail-class target costs more than under plain CE
    tail = torch.full((8,), 3)
    assert skew(logits[:8], tail) > ce(logits[:8], tail)


@pytest.mark.parametrize("name", LOSSES.names())
def test_empty_class_and_bf16_logits_stay_finite(name):
    loss_fn = LOSSES.build(name, class_counts=torch.tensor([100, 10, 0, 3]), cfg=BalanceConfig())
    logits, y = batch(7)
    assert torch.isfinite(loss_fn(logits.bfloat16(), y))
    assert loss_fn(logits.bfloat16(), y).dtype == torch.float32
