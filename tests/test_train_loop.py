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


def test_validation_subset_keeps_the_first_images_of_each_class():
    from git_ray.train.loop import validation_subset

    y = torch.tensor([2, 0, 0, 1, 0, 2, 0, 1])
    x = torch.arange(8).float().view(8, 1, 1, 1)
    xs, ys = validation_subset(x, y, 3, 2)
    assert ys.tolist() == [2, 0, 0, 1, 2, 1]  # at most two of each, in the split's order
    assert xs.flatten().tolist() == [0, 1, 2, 3, 5, 7]
    xa, ya = validation_subset(x, y, 3, None)
    assert torch.equal(xa, x) and torch.equal(ya, y)


def test_val_per_class_changes_the_id_only_when_set():
    base = trial_config({})
    assert base.fingerprint() == trial_config({"eval": {"val_per_class": None}}).fingerprint()
    assert base.fingerprint() != trial_config({"eval": {"val_per_class": 100}}).fingerprint()
    assert base.fingerprint() != trial_config({"generator": {"dis_layers": 2}}).fingerprint()
    assert base.fingerprint() != trial_config({"generator": {"dis_dim": 64}}).fingerprint()
    # an id stored by 0.1.0 (computed without the field) is still this config's id
    from git_ray.config import stable_hash

    d = base.model_dump()
    for section, key in (("dataset", "root"), ("generator", "cache"), ("train", "device"), ("train", "threads"),
                         ("eval", "forward_batch"), ("eval", "val_per_class"), ("generator", "style_weight"),
                         ("generator", "dis_layers"), ("generator", "dis_dim")):
        d[section].pop(key)
    assert base.fingerprint() == stable_hash(d)


def test_training_validates_on_the_subset():
    from git_ray.data import build_dataset
    from git_ray.registry import ARCHS
    from git_ray.train.loop import train_classifier

    cfg = trial_config({"dataset": {"source": "digits"}, "model": {"arch": "small_cnn", "width": 4},
                        "train": {"epochs": 1, "s1": 1, "s2": 1, "warmup_epochs": 0},
                        "eval": {"val_per_class": 3}})
    data = build_dataset(cfg.dataset)
    model = ARCHS.build("small_cnn", in_channels=1, num_classes=data.num_classes, width=4, head="linear",
                        image_size=data.image_size)
    seen = []
    predict_sizes = []
    orig = model.forward

    def forward(x):
        predict_sizes.append(len(x)) if not model.training else None
        return orig(x)

    model.forward = forward
    rows, _ = train_classifier(model, data, cfg, device=torch.device("cpu"), report=seen.append)
    assert predict_sizes == [3 * data.num_classes]  # one validation call on 3 images per class
    assert seen == rows and 0.0 <= rows[0]["val_balanced_accuracy"] <= 1.0
