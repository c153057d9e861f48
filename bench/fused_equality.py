"""Fused vs separate on the device at hand: G members trained as one stacked network and each
alone, then compared member by member (the tests do this on a CPU; this checks the CUDA path:
grouped cuDNN convolutions, channels-last, autotuned kernels).

    python -m bench.fused_equality [--device cuda] [--arch resnet20] [--epochs 2] [--json OUT.json]

Members as in tests/test_fused_trials.py (digits, rotation; differing in seed, instance,
sampler, loss and head, reweighting, oracle, lr), in float32 without autocast and with TF32 off,
so the figures are rounding only: the largest relative difference of the epoch losses and of
the weights (max |a - b| / max |b| over each tensor), and the test accuracy of each member both
ways. A ResNet amplifies rounding over many steps (docs/performance.md), so a few epochs of
a tiny network are compared.
"""
from __future__ import annotations

import argparse

import torch

from bench.common import default_device, machine_line, save_figures
from git_ray.config import deep_merge, trial_config
from git_ray.train.fused import stack_classifiers
from git_ray.train.loop import Member, batched_predict, make_predict, train_members
from git_ray.trial import _prepare


def member_configs(arch: str, epochs: int) -> list:
    base = {"dataset": {"source": "digits", "nuisance": "rotation", "imbalance_ratio": 10, "max_per_class": 40},
            "model": {"arch": arch, "width": 4},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.01, "warmup_epochs": 1, "s1": epochs,
                      "s2": epochs, "amp": False},
            "eval": {"ekld_images_per_class": 3, "ekld_draws": 3}}
    members = [{"seed": 0, "balance": {"loss": "ce", "sampler": "none"}},
               {"seed": 1, "dataset": {"instance": 1}, "balance": {"loss": "ldam", "sampler": "drs", "reweight": "drw"},
                "train": {"lr": 0.005}},
               {"seed": 2, "balance": {"loss": "ce", "sampler": "drs"}, "augment": {"oracle": True}}]
    return [trial_config(deep_merge(base, m)) for m in members]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # rounding of float32, not of TF32
    torch.backends.cudnn.allow_tf32 = False
    print(f"== fused vs separate, member by member ({machine_line(device)})")
    cfgs = member_configs(args.arch, args.epochs)
    prepared = [_prepare(c, device, None, None, lambda m: None) for c in cfgs]
    models = [p[2] for p in prepared]
    stacked = stack_classifiers(models).to(device)
    runs = train_members(stacked, [Member(c, p[0], None, p[1]) for c, p in zip(cfgs, prepared)], device=device)
    stacked.unstack_into()
    out: dict[str, float] = {"grouped": float(stacked.grouped)}
    for g, (cfg, model, run) in enumerate(zip(cfgs, models, runs)):
        data, aug, alone, _ = _prepare(cfg, device, None, None, lambda m: None)
        (ref,) = train_members(alone, [Member(cfg, data, None, aug)], device=device)
        loss = max(abs(a["train_loss"] - b["train_loss"]) / abs(b["train_loss"]) for a, b in zip(run.rows, ref.rows))
        weights = max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
                      for a, b in zip(model.state_dict().values(), alone.state_dict().values())
                      if b.is_floating_point())
        accs = []
        for net, r in ((model, run), (alone, ref)):
            preds = batched_predict(make_predict(net, r.norm, device, False), data.x_test, 256).argmax(1)
            accs.append(float((preds == data.y_test).float().mean()))
        out.update({f"member{g}.loss_rel_diff": loss, f"member{g}.weight_rel_diff": weights,
                    f"member{g}.test_accuracy_fused": accs[0], f"member{g}.test_accuracy_alone": accs[1]})
        print(f"   member {g} ({cfg.balance.loss}/{cfg.balance.sampler}, oracle {cfg.augment.oracle}): "
              f"loss rel diff {loss:.2e}, weight rel diff {weights:.2e}, test accuracy {accs[0]:.4f} fused "
              f"vs {accs[1]:.4f} alone", flush=True)
    if args.json:
        save_figures(args.json, device, argv, out)
    return out


if __name__ == "__main__":
    main()
