"""One trial as a plain function of its typed config: data -> (generator) -> classifier -> metrics.

`run_trial(cfg)` returns the Parquet rows of the trial (`TrialResult`); it never writes files
itself. `git-ray train` calls it directly; a Ray Tune sweep calls the very same function inside
its trainable, passing the device Ray assigned and a `report` callback for epoch metrics.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, ContextManager, Iterator

import numpy as np
import torch

from git_ray.config import TrialConfig
from git_ray.data import build_dataset, dataset_fingerprint
from git_ray.metrics import balanced_accuracy, ekld, group_accuracies, per_class_accuracy, spearman
from git_ray.registry import ARCHS, NUISANCES
from git_ray.results import TrialResult, build_result
from git_ray.train.fused import StackedClassifier, stack_classifiers
from git_ray.train.loop import Member, batched_predict, make_predict, place_model, resolve_device, train_members


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (a trial's CPU share), restoring the old value after."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_generator_cache(out: str) -> str:
    return out.rstrip("/") + "/generators"


def run_trial(
    cfg: TrialConfig,
    *,
    device: str | torch.device | None = None,
    report: Callable[[dict], Any] | None = None,
    generator_cache: str | None = None,
    lock_factory: Callable[[str], ContextManager] | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> TrialResult:
    """Train and evaluate one classifier as `cfg` says; return its rows (no files written).
    `report(row)` gets every epoch's row; returning `git_ray.train.loop.STOP` ends training
    early and the model as it stands is evaluated (fewer epoch rows than cfg.train.epochs)."""
    (result,) = run_trials([cfg], device=device, reports=[report], generator_cache=generator_cache,
                           lock_factory=lock_factory, log=log)
    if isinstance(result, BaseException):
        raise result
    return result


def run_trials(
    cfgs: list[TrialConfig],
    *,
    device: str | torch.device | None = None,
    reports: list[Callable[[dict], Any] | None] | None = None,
    generator_cache: str | None = None,
    lock_factory: Callable[[str], ContextManager] | None = None,
    log: Callable[[str], None] = lambda msg: None,
    compile_mode: str | None = None,
) -> list[TrialResult | Exception]:
    """Train G trials together as one fused run (git_ray.train.fused; G = 1 is the ordinary
    trial) and evaluate each alone; return each member's rows, or the error that stopped that
    member (G > 1: one member's failure, a NaN loss included, leaves the others running; G = 1
    raises). The members must share the arch, width, input shape, epochs, batch size and the
    number of training images; each keeps its own data, sampler, loss, weights, schedule and
    seed. A fused member's `train_seconds` is its share (1/G) of the run's wall time."""
    start = time.perf_counter()
    G = len(cfgs)
    reports = reports or [None] * G
    dev = resolve_device(cfgs[0].train.device, device)
    out: list[TrialResult | Exception | None] = [None] * G
    with torch_threads(cfgs[0].train.threads):
        members, models, index, qualities = [], [], [], []
        runs: dict[int, Any] = {}
        datasets: dict[str, Any] = {}  # members on the same data share it (read-only in training)
        for i, cfg in enumerate(cfgs):
            try:
                data, augmenter, model, quality = _prepare(cfg, dev, generator_cache, lock_factory, log, datasets)
            except Exception as err:  # noqa: BLE001  (one member's failure is that member's alone)
                if G == 1:
                    raise
                out[i] = err
                continue
            members.append(Member(cfg, data, reports[i], augmenter))
            qualities.append(quality)
            models.append(model)
            index.append(i)
        # Members train together when their batches line up: the same number of training images.
        parts: dict[int, list[int]] = {}
        for j, m in enumerate(members):
            parts.setdefault(len(m.data.y_train), []).append(j)
        for part in parts.values():
            ms = [members[j] for j in part]
            net = models[part[0]] if len(part) == 1 else place_model(stack_classifiers([models[j] for j in part]), dev)
            for j, run in zip(part, train_members(net, ms, device=dev, compile_mode=compile_mode)):
                runs[j] = run
            if isinstance(net, StackedClassifier):
                net.unstack_into()  # each member's trained network, for its own evaluation
        seconds = (time.perf_counter() - start) / max(len(members), 1)
        for j, (i, m, model) in enumerate(zip(index, members, models)):
            if runs[j].error is not None:
                if G == 1:
                    raise runs[j].error
                out[i] = runs[j].error
                continue
            try:
                out[i] = _evaluate(m.cfg, m.data, model, runs[j], dev, seconds, qualities[j])
            except Exception as err:  # noqa: BLE001
                if G == 1:
                    raise
                out[i] = err
    return out  # type: ignore[return-value]


def _prepare(cfg: TrialConfig, dev: torch.device, generator_cache, lock_factory, log,
             datasets: dict[str, Any] | None = None):
    """A trial's data on the device (from `datasets`, by data fingerprint, when an earlier
    member built it), its GIT augmenter, its seeded, placed network and its generator's quality
    check (augmenter and quality None without GIT)."""
    key = dataset_fingerprint(cfg.dataset)
    data = datasets.get(key) if datasets is not None else None
    if data is None:
        data = build_dataset(cfg.dataset).to(dev)
        if datasets is not None:
            datasets[key] = data
    log(f"data: {data.num_classes} classes, {len(data.y_train)} training images, "
        f"class sizes {int(data.class_counts.max())}..{int(data.class_counts.min())}")

    augmenter, quality = None, None
    if cfg.augment.git:
        from git_ray.generative import GitAugmenter, get_generator, read_generator_meta
        cache = cfg.generator.cache or generator_cache
        if cache is None:
            raise ValueError("augment.git needs a generator cache: set generator.cache or pass --out")
        munit = get_generator(data, cfg.generator, cache=cache, device=dev,
                              lock_factory=lock_factory, log=log)
        augmenter = GitAugmenter(munit, data, cfg.augment, s1=cfg.train.s1, seed=cfg.seed, device=dev)
        quality = (read_generator_meta(data, cfg.generator, cache=cache) or {}).get("quality")

    # Model initialisation draws from torch's global RNG; fork it so the caller's stays intact.
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = ARCHS.build(cfg.model.arch, in_channels=data.channels, num_classes=data.num_classes,
                            width=cfg.model.width, head=cfg.head, image_size=data.image_size)
    return data, augmenter, place_model(model, dev), quality


def _evaluate(cfg: TrialConfig, data, model, run, dev: torch.device, seconds: float,
              quality: dict | None) -> TrialResult:
    """Per-class accuracy on the test set, then the eKLD estimator, then the rows."""
    predict = make_predict(model, run.norm, dev, cfg.train.amp, cfg.logit_scale)
    forward = cfg.eval.forward_batch_for(dev)
    preds = batched_predict(predict, data.x_test, forward).argmax(1)
    class_acc = per_class_accuracy(preds, data.y_test, data.num_classes)
    nuisance = NUISANCES.build(cfg.dataset.nuisance, strength=cfg.dataset.nuisance_strength)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 104729 + 17)
    ekld_c, consistency_c = ekld(
        predict, data.x_test, data.x_test_clean, data.y_test, nuisance,
        images_per_class=cfg.eval.ekld_images_per_class, draws=cfg.eval.ekld_draws,
        num_classes=data.num_classes, generator=gen, batch_size=cfg.eval.batch_size,
        forward_batch_size=forward)
    return assemble_result(cfg, data, preds, class_acc, ekld_c, consistency_c, run.rows, seconds, dev,
                           generator_quality=quality)


def assemble_result(cfg, data, preds, class_acc, ekld_c, consistency_c, epochs, seconds, dev,
                    generator_quality: dict | None = None) -> TrialResult:
    """The three tables' rows from a finished trial's tensors."""
    counts = data.class_counts.cpu().numpy()
    test_counts = torch.bincount(data.y_test.cpu(), minlength=data.num_classes).numpy()
    acc, ek, cons = (t.cpu().numpy() for t in (class_acc, ekld_c, consistency_c))
    # Rank 0 = largest training class, in the instance's class order (ties at the floor keep it).
    rank = np.empty(data.num_classes, dtype=np.int64)
    rank[data.class_order.cpu().numpy()] = np.arange(data.num_classes)
    groups = group_accuracies(class_acc, data.class_counts, cfg.eval.many_threshold, cfg.eval.few_threshold)
    metrics = {
        "accuracy": float((preds == data.y_test).float().mean()),
        "balanced_accuracy": balanced_accuracy(class_acc),
        "many_accuracy": _f(groups["many"]), "medium_accuracy": _f(groups["medium"]),
        "few_accuracy": _f(groups["few"]),
        "ekld_mean": float(np.nanmean(ek)),
        "ekld_size_spearman": _f(spearman(counts.astype(float), ek)),
        # The GIT generator's quality check (its meta.json); null for trials without GIT.
        "generator_coverage": _opt(generator_quality, "coverage_distance"),
        "generator_label_agreement": _opt(generator_quality, "label_agreement"),
    }
    per_class = [
        {"class_id": c, "class_rank": int(rank[c]), "train_count": int(counts[c]),
         "test_count": int(test_counts[c]), "accuracy": _f(acc[c]), "ekld": _f(ek[c]),
         "consistency": _f(cons[c])}
        for c in range(data.num_classes)
    ]
    return build_result(cfg, cfg.fingerprint(), metrics, per_class, epochs,
                        train_seconds=seconds, device=str(dev))


def _f(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.nan


def _opt(d: dict | None, key: str) -> float | None:
    v = None if d is None else d.get(key)
    return None if v is None else float(v)


def summary_line(result: TrialResult) -> str:
    """A short human summary of a finished trial."""
    t = result.trial
    return (f"accuracy {t['accuracy']:.3f}, balanced {t['balanced_accuracy']:.3f}, "
            f"eKLD head {t['ekld_head']:.4f} vs tail {t['ekld_tail']:.4f}, "
            f"Spearman(size, eKLD) {t['ekld_size_spearman']:+.2f}, {t['train_seconds']:.1f}s on {t['device']}")

