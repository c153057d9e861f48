"""Every registered arch: shapes for any channel count and size, both heads, init, learning."""
import pytest
import torch
import torch.nn.functional as F

from git_ray.registry import ARCHS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convolutions run far slower with 2 threads on a busy 2-core box than with one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name, channels=3, classes=10, head="linear", width=4, size=16):
    return ARCHS.build(name, in_channels=channels, num_classes=classes, width=width, head=head,
                       image_size=size)


@pytest.mark.parametrize("name", ARCHS.names())
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 28, 32])
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_shapes_and_heads(name, channels, size, head):
    torch.manual_seed(0)
    model = build(name, channels, classes=7, head=head, size=size)
    x = torch.rand(2, channels, size, size)  # (B, C, H, W)
    logits = model(x)
    assert logits.shape == (2, 7)
    feats = model.features(x)
    assert feats.shape == (2, model.feature_dim)
    assert torch.isfinite(logits).all()
    if head == "cosine":
        assert logits.abs().max() <= 1.0
        # the cosine of features against normalised weights, recomputed by hand
        w = F.normalize(model.head.weight, dim=1)
        assert torch.allclose(logits, F.normalize(feats, dim=1) @ w.t(), atol=1e-5)
    else:
        assert logits.abs().max() > 1e-3  # a linear head is not squashed


@pytest.mark.parametrize("name", ARCHS.names())
def test_backward_reaches_every_parameter(name):
    model = build(name, channels=1, classes=5)
    model(torch.rand(4, 1, 16, 16)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_resnet_sizes_match_he_et_al():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # He et al. report 0.27M (ResNet-20) and 0.46M (ResNet-32) parameters for CIFAR-10.
    assert count(build("resnet20", 3, 10, width=16)) == pytest.approx(0.27e6, rel=0.01)
    assert count(build("resnet32", 3, 10, width=16)) == pytest.approx(0.46e6, rel=0.01)
    # 3 stages of 16/32/64 channels: the pooled features are 4 * width wide
    assert build("resnet20", 1, 49, width=16).feature_dim == 64
    assert count(build("resnet20", 1, 10, width=16)) < count(build("resnet20", 3, 10, width=16))


def test_resnet_block_counts():
    from git_ray.models.resnet import BasicBlock

    blocks = lambda m: sum(isinstance(x, BasicBlock) for x in m.modules())  # noqa: E731
    assert blocks(build("resnet20")) == 9 and blocks(build("resnet32")) == 15


def test_zero_pad_shortcut_is_identity_on_kept_channels():
    from git_ray.models.resnet import ZeroPadShortcut

    x = torch.randn(2, 4, 7, 7)
    out = ZeroPadShortcut(4, 8, stride=2)(x)
    assert out.shape == (2, 8, 4, 4)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0


def test_kaiming_init_scale():
    model = build("resnet20", 3, 10, width=16)
    conv = model.body[0]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.25)


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="cosine"):
        build("small_cnn", head="softmax")


@pytest.mark.parametrize("name", ARCHS.names())
@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_learns_a_simple_task(name, head):
    # Class = which half of the image is bright: every arch should fit 12 such images fast.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12) % 2
    x = torch.rand(12, 1, 8, 8, generator=g) * 0.2  # (B, C, H, W), small to keep CPU time low
    x[y == 0, :, :, :4] += 0.8
    x[y == 1, :, :, 4:] += 0.8
    torch.manual_seed(0)
    model = build(name, channels=1, classes=2, head=head, size=8)
    scale = 10.0 if head == "cosine" else 1.0  # cosines need a scale to give a sharp softmax
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(scale * model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Judged in train mode: 20 steps are too few for BN running statistics to settle.
    assert (model(x).argmax(1) == y).all()
    assert losses[-1] < 0.5 * losses[0]
