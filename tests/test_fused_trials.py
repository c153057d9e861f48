"""Fused trials: G members trained as one stacked network equal G separate runs, member by
member (weights, BatchNorm statistics, epoch rows, test predictions, eKLD), to float tolerance;
a NaN in one member fails that member alone."""
import math
from dataclasses import fields, replace

import pytest
import torch

from git_ray.config import deep_merge, trial_config
from git_ray.train.fused import MemberSGD, StackedClassifier, stack_classifiers
from git_ray.train.loop import STOP, Member, NonFiniteLossError, train_classifier, train_members
from git_ray.trial import _prepare, run_trial, run_trials

CPU = torch.device("cpu")


def _cfgs(arch: str) -> list:
    base = {"dataset": {"source": "digits", "nuisance": "rotation", "imbalance_ratio": 10, "max_per_class": 40},
            "model": {"arch": arch, "width": 4},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "warmup_epochs": 1, "s1": 2, "s2": 3},
            "eval": {"ekld_images_per_class": 3, "ekld_draws": 3}}
    members = [  # differ in seed, instance, sampler, loss (and so head), reweighting, oracle, lr
        {"seed": 0, "balance": {"loss": "ce", "sampler": "none"}},
        {"seed": 1, "dataset": {"instance": 1}, "balance": {"loss": "ldam", "sampler": "drs", "reweight": "drw"},
         "train": {"lr": 0.03}},
        {"seed": 2, "balance": {"loss": "ce", "sampler": "drs"}, "augment": {"oracle": True}},
    ]
    return [trial_config(deep_merge(base, m)) for m in members]


def _prep(cfg, double: bool = False):
    """A member's data, augmenter and network; in float64 with `double`: a deep net on tiny
    batches amplifies float32 rounding (a 2e-7 nudge of one lone ResNet-20's weights grows to
    1e-2 in 8 steps, measured), so equality to tolerance is checked where rounding is 1e-16."""
    data, aug, model, _ = _prepare(cfg, CPU, None, None, lambda m: None)
    if double:
        data = replace(data, **{f.name: getattr(data, f.name).double() for f in fields(data)
                                if isinstance(getattr(data, f.name), torch.Tensor)
                                and getattr(data, f.name).is_floating_point()})
        model = model.double()
    return data, aug, model


def _train_alone(cfg, double: bool = False):
    data, aug, model = _prep(cfg, double)
    (run,) = train_members(model, [Member(cfg, data, None, aug)], device=CPU)
    return model, run


def _train_fused(cfgs, double: bool = False, grouped: bool = True, **kw):
    """Trained together; grouped (the GPU path, tested here on the CPU) unless told otherwise."""
    prepared = [_prep(c, double) for c in cfgs]
    models = [p[2] for p in prepared]
    stacked = stack_classifiers(models, grouped=grouped)
    runs = train_members(stacked, [Member(c, p[0], None, p[1]) for c, p in zip(cfgs, prepared)], device=CPU, **kw)
    stacked.unstack_into()
    return models, runs


@pytest.mark.parametrize("arch,double", [("small_cnn", False), ("resnet20", True)])
def test_fused_members_train_as_if_alone(arch, double):
    cfgs = _cfgs(arch)
    assert cfgs[0].head == "linear" and cfgs[1].head == "cosine"  # members with different heads
    models, runs = _train_fused(cfgs, double)
    for cfg, model, run in zip(cfgs, models, runs):
        alone, ref = _train_alone(cfg, double)
        assert run.error is None and len(run.rows) == cfg.train.epochs
        for got, want in zip(run.rows, ref.rows):
            assert got["lr"] == want["lr"]
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4, abs=1e-5)
            for k in ("train_accuracy", "val_accuracy", "val_balanced_accuracy"):
                assert got[k] == pytest.approx(want[k], abs=0.02), k  # a rounding may flip an argmax
        mine, theirs = model.state_dict(), alone.state_dict()
        assert mine.keys() == theirs.keys()
        for name in theirs:  # weights and BatchNorm running statistics
            assert torch.allclose(mine[name].float(), theirs[name].float(), rtol=1e-3, atol=1e-4), name
        # the members really trained apart: their first convolutions differ
        first = next(k for k in theirs if k.endswith("weight"))
        assert not torch.allclose(models[0].state_dict()[first], models[1].state_dict()[first])


def test_member_by_member_path_is_separate_runs_exactly():
    cfgs = _cfgs("small_cnn")
    models, runs = _train_fused(cfgs, grouped=False)  # the CPU default
    for cfg, model, run in zip(cfgs, models, runs):
        alone, ref = _train_alone(cfg)
        assert run.rows == [{**r, "seconds": got["seconds"]} for r, got in zip(ref.rows, run.rows)]
        for (name, a), b in zip(model.state_dict().items(), alone.state_dict().values()):
            assert torch.equal(a, b), name


def test_fused_evaluation_equals_separate_trials():
    cfgs = _cfgs("small_cnn")
    fused = run_trials(cfgs, device="cpu")
    for cfg, got in zip(cfgs, fused):
        want = run_trial(cfg, device="cpu")
        assert got.trial["trial_id"] == want.trial["trial_id"] == cfg.fingerprint()
        acc_g = [r["accuracy"] for r in got.per_class]
        acc_w = [r["accuracy"] for r in want.per_class]
        assert acc_g == pytest.approx(acc_w, abs=0.05)
        ek_g = [r["ekld"] for r in got.per_class]
        ek_w = [r["ekld"] for r in want.per_class]
        assert ek_g == pytest.approx(ek_w, rel=0.05, abs=1e-3)
        assert got.trial["accuracy"] == pytest.approx(want.trial["accuracy"], abs=0.02)
        assert len(got.epochs) == len(want.epochs)


def test_a_nan_member_fails_alone():
    cfgs = _cfgs("small_cnn")
    cfgs[1] = cfgs[1].model_copy(update={"train": cfgs[1].train.model_copy(update={"lr": 1e12})})
    models, runs = _train_fused(cfgs, nan_check_every=3)
    assert isinstance(runs[1].error, NonFiniteLossError) and "epoch 0" in str(runs[1].error)
    assert runs[1].rows == []  # failed in its first epoch: no epoch row
    for g in (0, 2):
        assert runs[g].error is None and len(runs[g].rows) == 3
        assert all(math.isfinite(r["train_loss"]) for r in runs[g].rows)
        assert all(torch.isfinite(t).all() for t in models[g].state_dict().values())
        alone, ref = _train_alone(cfgs[g])
        assert runs[g].rows[-1]["train_loss"] == pytest.approx(ref.rows[-1]["train_loss"], rel=1e-4)
    # run_trials records the failure for that member and returns the others' results
    out = run_trials(cfgs, device="cpu")
    assert isinstance(out[1], NonFiniteLossError)
    assert out[0].trial["trial_id"] == cfgs[0].fingerprint() and out[2].trial["trial_id"] == cfgs[2].fingerprint()


def test_lone_nan_still_raises_with_its_epoch():
    cfg = _cfgs("small_cnn")[0]
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e12})})
    with pytest.raises(NonFiniteLossError, match="epoch 0"):
        run_trial(cfg, device="cpu")


def test_member_sgd_updates_each_member_with_its_own_lr():
    cfgs = _cfgs("small_cnn")[:2]
    models = [_prepare(c, CPU, None, None, lambda m: None)[2] for c in cfgs]
    stacked = stack_classifiers(models, grouped=True)
    assert isinstance(stacked, StackedClassifier) and stacked.members == 2
    before = {k: v.clone() for k, v in stacked.state_dict().items()}
    opt = MemberSGD(stacked, lr=[0.1, 0.0], momentum=[0.9, 0.9], weight_decay=[0.0, 0.0])
    x = torch.rand(4, 2, 16, 16)
    stacked(x).sum().backward()
    opt.step()
    conv = next(k for k in before if k.endswith("weight") and before[k].dim() == 4)
    n = before[conv].shape[0] // 2
    after = stacked.state_dict()[conv]
    assert not torch.equal(after[:n], before[conv][:n])  # lr 0.1 moved member 0
    assert torch.equal(after[n:], before[conv][n:])  # lr 0 left member 1 alone


def test_member_sgd_one_update_for_alike_members_equals_the_per_member_one():
    cfgs = _cfgs("resnet20")[:2]
    nets = [stack_classifiers([_prepare(c, CPU, None, None, lambda m: None)[2] for c in cfgs], grouped=True)
            for _ in range(2)]
    opts = [MemberSGD(n, lr=[0.1, 0.1], momentum=[0.9, 0.9], weight_decay=[5e-4, 5e-4]) for n in nets]
    gen = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.rand(6, 2, 16, 16, generator=gen)
        for i, (net, opt) in enumerate(zip(nets, opts)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step() if i == 0 else opt._step_members(None)  # one stacked update vs member by member
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def test_stacking_rejects_different_archs():
    a = _prepare(_cfgs("small_cnn")[0], CPU, None, None, lambda m: None)[2]
    b = _prepare(_cfgs("resnet20")[0], CPU, None, None, lambda m: None)[2]
    with pytest.raises(ValueError, match="cannot stack"):
        stack_classifiers([a, b])


def test_members_on_the_same_data_share_it():
    cfgs = _cfgs("small_cnn")  # members 0 and 2: the same data config; member 1: another instance
    cache: dict = {}
    data = [_prepare(c, CPU, None, None, lambda m: None, cache)[0] for c in cfgs]
    assert data[0] is data[2] and data[1] is not data[0] and len(cache) == 2


def test_stop_from_report_ends_a_lone_run_and_a_fused_group_after_that_epoch():
    """The driver's STOP (ASHA): a lone trial ends after the epoch whose report returned it; a
    fused group is one Tune trial, so one member's STOP ends every member there."""
    cfgs = _cfgs("small_cnn")
    seen: list[int] = []
    data, aug, model = _prep(cfgs[0])
    rows, _ = train_classifier(model, data, cfgs[0], device=CPU, augmenter=aug,
                               report=lambda row: seen.append(row["epoch"]) or (STOP if row["epoch"] == 1 else None))
    assert [r["epoch"] for r in rows] == seen == [0, 1]  # of 3 epochs
    _, ref = _train_alone(cfgs[0])
    assert rows == [{**r, "seconds": got["seconds"]} for r, got in zip(ref.rows, rows)]  # the same two epochs

    prepared = [_prep(c) for c in cfgs]
    reports = [None, lambda row: STOP if row["epoch"] == 0 else None, None]
    runs = train_members(stack_classifiers([p[2] for p in prepared]),
                         [Member(c, p[0], r, p[1]) for c, p, r in zip(cfgs, prepared, reports)], device=CPU)
    assert [len(run.rows) for run in runs] == [1, 1, 1]
    assert all(run.error is None for run in runs)
