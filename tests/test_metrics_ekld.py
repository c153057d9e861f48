"""kl_divergence against a direct computation; the eKLD estimator's invariants."""
import math

import pytest
import torch

from git_ray.metrics import choose_images, ekld, kl_divergence

K = 3


def shift_nuisance(x, generator):
    """Add one random constant per image: a stand-in nuisance written for the test."""
    shift = torch.rand(len(x), 1, 1, 1, generator=generator, device=generator.device)
    return (x + shift.to(x.device)).clamp(0, 1)


def data(n_per_class=(6, 4, 0), size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    x_clean = torch.rand(len(y), 1, size, size, generator=g) * 0.5
    x_shown = shift_nuisance(x_clean, g)
    return x_shown, x_clean, y


def run(predict, x_shown, x_clean, y, seed=0, **kw):
    args = dict(images_per_class=3, draws=5, num_classes=K, batch_size=7)
    args.update(kw)
    return ekld(predict, x_shown, x_clean, y, shift_nuisance,
                generator=torch.Generator().manual_seed(seed), **args)


def test_kl_divergence_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(4, 2, 5, generator=g), torch.randn(4, 2, 5, generator=g)
    pp, qq = p.softmax(-1), q.softmax(-1)
    direct = (pp * (pp.log() - qq.log())).sum(-1)
    assert kl_divergence(p, q).shape == (4, 2)
    assert torch.allclose(kl_divergence(p, q), direct, atol=1e-6)
    assert torch.allclose(kl_divergence(p, p), torch.zeros(4, 2))
    assert (kl_divergence(p, q) > 0).all()
    assert not torch.allclose(kl_divergence(p, q), kl_divergence(q, p))  # not symmetric


def test_kl_divergence_handles_zero_probabilities():
    p = torch.tensor([[0.0, -float("inf"), 1.0]])
    q = torch.tensor([[1.0, 0.0, -float("inf")]])
    assert torch.isfinite(kl_divergence(p, p)).all() and kl_divergence(p, p).item() == 0
    assert kl_divergence(q, q).item() == 0


def test_input_blind_model_has_zero_ekld_and_full_consistency():
    x_shown, x_clean, y = data()
    calls = []

    def constant(x):
        calls.append(len(x))
        return torch.tensor([[0.2, 1.5, -0.3]]).expand(len(x), K)

    e, cons = run(constant, x_shown, x_clean, y)
    assert e.shape == (K,) and cons.shape == (K,)
    assert torch.equal(e[:2], torch.zeros(2, dtype=e.dtype))
    assert torch.equal(cons[:2], torch.ones(2, dtype=cons.dtype))
    assert math.isnan(e[2]) and math.isnan(cons[2])  # class 2 has no test images
    # batched: 6 reference images + 6 x 5 draws = 36 inputs in chunks of at most 7
    assert sum(calls) == 6 + 6 * 5 and max(calls) <= 7 and len(calls) <= 2 + math.ceil(30 / 7)


def test_nuisance_sensitive_model_has_positive_ekld():
    x_shown, x_clean, y = data(n_per_class=(6, 4, 3))
    w = torch.tensor([8.0, 0.0, -8.0])

    def brightness(x):  # logits follow the mean intensity, which the nuisance shifts
        return (x.mean(dim=(1, 2, 3)) - 0.5)[:, None] * w  # argmax flips at mean 0.5

    e, cons = run(brightness, x_shown, x_clean, y, draws=20)
    assert (e > 1e-3).all() and (cons <= 1).all() and (cons >= 0).all()
    assert (cons < 1).any()


def test_ekld_agrees_with_a_slow_reference_and_is_reproducible():
    x_shown, x_clean, y = data(n_per_class=(5, 5, 2), seed=3)
    w = torch.randn(16, K, generator=torch.Generator().manual_seed(1))

    def linear(x):
        return x.flatten(1) @ w

    e1, c1 = run(linear, x_shown, x_clean, y, seed=5)
    e2, c2 = run(linear, x_shown, x_clean, y, seed=5)
    assert torch.equal(e1, e2) and torch.equal(c1, c2)
    e3, _ = run(linear, x_shown, x_clean, y, seed=6)
    assert not torch.equal(e1, e3)

    # Reference: one image, one draw at a time, replaying the same generator stream.
    g = torch.Generator().manual_seed(5)
    sel = choose_images(y, K, 3, g)
    ref_kl = torch.zeros(K, dtype=torch.float64)
    n = torch.zeros(K)
    pairs = [(int(i), d) for i in sel for d in range(5)]
    # the estimator draws the nuisance for a chunk of 7 pairs at once; replay that grouping
    for start in range(0, len(pairs), 7):
        chunk = pairs[start:start + 7]
        x_new = shift_nuisance(x_clean[[i for i, _ in chunk]], g)
        for (i, _), xn in zip(chunk, x_new):
            ref_kl[y[i]] += kl_divergence(linear(x_shown[i:i + 1]), linear(xn[None])).item()
            n[y[i]] += 1
    assert torch.allclose(e1, ref_kl / n, atol=1e-6)


def test_forward_batch_changes_no_draw():
    x_shown, x_clean, y = data(n_per_class=(5, 5, 2), seed=3)
    w = torch.randn(16, K, generator=torch.Generator().manual_seed(1))
    calls: list[int] = []

    def linear(x):
        calls.append(len(x))
        return x.flatten(1) @ w

    e1, c1 = run(linear, x_shown, x_clean, y, seed=5)
    assert max(calls) == 7
    calls.clear()
    e2, c2 = run(linear, x_shown, x_clean, y, seed=5, forward_batch_size=2)
    assert max(calls) == 2  # the model saw smaller batches ...
    assert torch.allclose(e1, e2, atol=1e-6) and torch.equal(c1, c2)  # ... of the very same draws


def test_ekld_is_nonnegative_and_respects_images_per_class():
    x_shown, x_clean, y = data(n_per_class=(10, 2, 5))
    sel = choose_images(y, K, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(y[sel], minlength=K).tolist() == [4, 2, 4]
    assert len(set(sel.tolist())) == len(sel)
    w = torch.randn(16, K, generator=torch.Generator().manual_seed(2))
    e, _ = run(lambda x: x.flatten(1) @ w, x_shown, x_clean, y, images_per_class=4)
    assert (e >= 0).all()
