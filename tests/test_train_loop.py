"""The training loop's schedule, device choice and evaluation scaling."""
import pytest
import torch

from git_ray.config import trial_config
from git_ray.train.loop import Normaliser, lr_at, make_predict, resolve_device


def test_schedule_warms_up_then_steps_down():
    cfg = trial_config({"train": {"lr": 0.1, "warmup_epochs": 5, "s1": 30, "s2": 40, "epochs": 50}})
    assert lr_at(cfg, 0) == pytest.approx(0.1 / 5)  # epoch 0 of the warm-up: lr / 5, as the paper
    assert lr_at(cfg, 2.5) == pytest.approx(0.1 * 3.5 / 5)
    assert lr_at(cfg, 4) == pytest.approx(0.1) and lr_at(cfg, 29.9) == pytest.approx(0.1)
    assert lr_at(cfg, 30) == pytest.approx(0.1 * 0.01)
    assert lr_at(cfg, 40) == pytest.approx(0.1 * 1e-4)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", "cpu") == torch.device("cpu")  # what the scheduler assigned wins
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_predict_scales_cosine_outputs_like_the_loss():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(5, 1, 2, 2)
    norm = Normaliser.fit(x)
    plain = make_predict(model, norm, torch.device("cpu"), amp=False)(x)
    scaled = make_predict(model, norm, torch.device("cpu"), amp=False, logit_scale=30.0)(x)
    assert torch.allclose(scaled, 30.0 * plain)
    assert not model.training  # evaluation runs in eval mode


def test_place_model_is_channels_last_on_cpu_with_the_same_outputs():
    import copy

    from git_ray.registry import ARCHS
    from git_ray.train.loop import place_model

    torch.manual_seed(0)
    model = ARCHS.build("resnet20", in_channels=1, num_classes=5, width=4, head="linear", image_size=16).eval()
    placed = place_model(copy.deepcopy(model), torch.device("cpu"))
    conv = next(m for m in placed.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                    and m.in_channels > 1).weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(placed(x), model(x), atol=1e-5)
