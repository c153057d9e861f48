"""MomentumSGD: the same weights as torch.optim.SGD, bit for bit, and no torch._dynamo import."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from git_ray.train.optim import MomentumSGD


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 2e-4), (0.9, 0.0), (0.0, 1e-3), (0.0, 0.0)])
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_torch_sgd_bit_for_bit(momentum, weight_decay, foreach):
    ours_net, ref_net = _net(0), _net(0)
    ours = MomentumSGD(ours_net.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ref = torch.optim.SGD(ref_net.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay,
                          foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        x = torch.randn(8, 1, 8, 8, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        lr = 0.1 * (step + 1) / 4 if step < 4 else (0.001 if step > 8 else 0.1)  # warm-up, then a drop
        for opt, net in ((ours, ours_net), (ref, ref_net)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(ours_net.parameters(), ref_net.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(ours_net.parameters()), next(_net(0).parameters()))  # it did train


def test_parameters_without_gradient_are_left_alone():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    opt = MomentumSGD([a, b], lr=0.5, momentum=0.9)
    (2 * a).sum().backward()  # b gets no gradient
    opt.step()
    assert torch.equal(a.detach(), torch.zeros(3)) and torch.equal(b.detach(), torch.ones(3))
    opt.zero_grad(set_to_none=False)
    assert torch.equal(a.grad, torch.zeros(3)) and b.grad is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="lr"):
        MomentumSGD([nn.Parameter(torch.ones(1))], lr=-1.0)
    with pytest.raises(ValueError, match="no parameters"):
        MomentumSGD([torch.ones(1)], lr=0.1)


def test_a_trial_never_imports_torch_dynamo():
    # The reason the class exists: torch.optim.SGD imports torch._dynamo (seconds of CPU) in
    # every fresh process, i.e. in every Ray worker's first trial.
    code = ("import sys\n"
            "from git_ray.config import TrialConfig\n"
            "from git_ray.trial import run_trial\n"
            "cfg = TrialConfig.model_validate({'dataset': {'source': 'digits', 'nuisance': 'background'},\n"
            "    'model': {'arch': 'small_cnn', 'width': 4}, 'train': {'epochs': 1, 'batch_size': 64, 's1': 1,\n"
            "    's2': 1, 'warmup_epochs': 0}, 'eval': {'ekld_images_per_class': 2, 'ekld_draws': 2}})\n"
            "run_trial(cfg, device='cpu')\n"
            "print('dynamo' if 'torch._dynamo' in sys.modules else 'clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "clean"
