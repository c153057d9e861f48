"""What runs in Ray's worker processes: the trainables Ray Tune calls for a trial
(`trial_trainable`) or a fused group of trials (`fused_trainable`), phase 0's generator task
(`pretrain_generator`), and the two small actors the driver starts for them: `LockTable` (the
generator locks, as leases; `ray_lock` holds one) and `StopBoard` (the trials ASHA stopped).

The driver (`git_ray.sweep.runner`) decides what runs; everything here runs one trial, one fused
group or one generator group on the resources Ray gave it and writes its own rows to storage.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from git_ray import storage
from git_ray.lease import Heartbeat, wait_until
from git_ray.sweep.spec import FUSED_KEY, SweepSpec

LOCK_ACTOR = "git_ray_generator_locks"
STOP_ACTOR = "git_ray_early_stops"


def assigned_device(resources: dict[str, float]) -> str:
    """CUDA if Ray gave this trial a GPU share (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    import ray
    import torch

    if resources.get("gpu", 0) > 0 and ray.get_gpu_ids() and torch.cuda.is_available():
        share = resources.get("gpu_memory_fraction") or min(1.0, resources["gpu"])
        torch.cuda.set_per_process_memory_fraction(share, 0)  # a fraction is no isolation: cap it
        return "cuda:0"
    return "cpu"


@contextmanager
def ray_lock(key: str, lease_s: float = 60.0, poll_s: float = 1.0,
             log: Callable[[str], None] = lambda m: print(f"[generator] {m}", flush=True),
             wait: bool = True) -> Iterator[bool]:
    """Hold a sweep-wide lease on `key` through the driver's lock actor (works across nodes).

    The holder renews it every lease/4 s from a background thread; if it stops (killed, node
    lost) a waiter takes it over `lease_s` after the last renewal and, for a generator, resumes
    from the training checkpoint the dead holder left. Waiters log who holds it every 30 s.
    The block gets True; with wait=False it gets False at once (holding nothing) when another
    holder keeps the lease alive (a fused generator group leaves that member out)."""
    import ray

    actor = ray.get_actor(LOCK_ACTOR)
    token = os.urandom(8).hex()
    holder = f"{platform.node()}:{os.getpid()}"

    def take() -> str | None:
        status, info = ray.get(actor.acquire.remote(key, token, holder, lease_s))
        if status == "taken_over":
            log(f"warning: took over the lock on {key} from {info} (no renewal for over {lease_s:g} s)")
        return info if status == "held" else None

    if not wait:
        if take() is not None:
            yield False
            return
    else:
        wait_until(take, what=f"the lock on {key}", poll_s=min(poll_s, lease_s / 4), log=log)
    beat = Heartbeat(lambda: ray.get(actor.renew.remote(key, token)), every_s=lease_s / 4,
                     on_lost=lambda: log(f"warning: lost the lock on {key} (renewal missed)")).start()
    try:
        yield True
    finally:
        beat.stop()
        ray.get(actor.release.remote(key, token))


class LockTable:
    """A Ray actor: who holds which generator fingerprint, as leases on this actor's clock."""

    def __init__(self) -> None:
        # key -> [token, holder "host:pid", started (wall clock), last renewal (monotonic), term]
        self.held: dict[str, list] = {}

    def acquire(self, key: str, token: str, holder: str, lease_s: float) -> tuple[str, str | None]:
        """("granted", None), ("taken_over", previous holder) or ("held", who and since when)."""
        now = time.monotonic()
        cur = self.held.get(key)
        if cur is not None and cur[0] != token:
            if now - cur[3] <= cur[4]:
                since = time.strftime("%H:%M:%S UTC", time.gmtime(cur[2]))
                return "held", f"{cur[1]} since {since} (renewed {now - cur[3]:.0f} s ago)"
            self.held[key] = [token, holder, time.time(), now, lease_s]
            return "taken_over", cur[1]
        self.held[key] = [token, holder, cur[2] if cur else time.time(), now, lease_s]
        return "granted", None

    def renew(self, key: str, token: str) -> bool:
        cur = self.held.get(key)
        if cur is None or cur[0] != token:
            return False
        cur[3] = time.monotonic()
        return True

    def release(self, key: str, token: str) -> None:
        if self.held.get(key, [None])[0] == token:
            del self.held[key]


class StopBoard:
    """A Ray actor: the Tune trials the scheduler (ASHA) stopped, so that each such trial ends
    its training, evaluates the model as it stands and writes its rows (status `stopped`)."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stop(self, trial_id: str) -> None:
        self.stopped.add(trial_id)

    def is_stopped(self, trial_id: str) -> bool:
        return trial_id in self.stopped


def epoch_metrics(row: dict) -> dict:
    return {k: row[k] for k in ("epoch", "train_loss", "train_accuracy", "val_accuracy",
                                "val_balanced_accuracy")}


def final_metrics(trial_row: dict, last_epoch: dict | None, skipped: bool) -> dict:
    out = {f"test_{k}": trial_row[k] for k in ("accuracy", "balanced_accuracy", "few_accuracy")}
    out.update({k: trial_row[k] for k in ("ekld_mean", "ekld_tail", "ekld_size_spearman", "train_seconds")})
    out.update(epoch_metrics(last_epoch) if last_epoch else {})
    out.update(trial_id=trial_row["trial_id"], skipped=skipped, done=True,
               stopped=trial_row.get("status") == "stopped")
    return out


def epoch_reporter(send: Callable[[dict], None], every_s: float,
                   clock: Callable[[], float] = time.monotonic,
                   should_stop: Callable[[], bool] | None = None) -> Callable[[dict], Any]:
    """`send` for the first epoch row and then at most one row per `every_s` seconds.

    Every `tune.report` is a round trip to the driver (about 6 ms here, 40 of them in a
    quickstart trial); without a scheduler Tune only shows these rows as progress, the epochs
    table keeps them all, and the trial's final report always carries its last epoch.
    After a row is sent, `should_stop()` (the scheduler's verdict) returning True makes the
    reporter return STOP, which ends the training loop after this epoch."""
    from git_ray.train.loop import STOP

    last = [-math.inf]

    def report(row: dict) -> Any:
        now = clock()
        if now - last[0] >= every_s:
            last[0] = now
            send(row)
            if should_stop is not None and should_stop():
                return STOP
        return None

    return report


def node_id() -> str:
    """The Ray node this process runs on (reported with every metric: where did a trial run)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def local_paths_absolute(cfg, base_dir: str | None):
    """The trial config with relative local paths (dataset.root, generator.cache) made absolute
    against the driver's working directory: Ray Tune runs each trial inside its own trial folder,
    where a relative path would point nowhere. URIs and absolute paths are left as they are."""
    if not base_dir:
        return cfg
    fix = lambda p: p if p is None or storage.is_remote(p) or os.path.isabs(os.path.expanduser(p)) \
        else os.path.join(base_dir, p)  # noqa: E731
    return cfg.model_copy(update={
        "dataset": cfg.dataset.model_copy(update={"root": fix(cfg.dataset.root)}),
        "generator": cfg.generator.model_copy(update={"cache": fix(cfg.generator.cache)})})


def trial_trainable(params: dict, *, spec_json: str, base_dir: str | None = None) -> None:
    """The function Ray Tune runs for each trial: one `run_trial`, rows written to storage."""
    import ray
    from ray import tune

    from git_ray.results import read_trial, write_trial
    from git_ray.trial import default_generator_cache, run_trial, torch_threads

    spec = SweepSpec.model_validate_json(spec_json)
    optuna_number = params.get("__optuna_trial_number")  # set by LinkedOptunaSearch
    cfg = local_paths_absolute(spec.trial_config(_params(params)), base_dir)
    node = node_id()
    stored = read_trial(spec.root, cfg.fingerprint())
    if stored is not None:  # finished earlier (a Ray retry after the write, a concurrent run)
        tune.report({**final_metrics(stored["trial"], stored["last_epoch"], skipped=True), "node_id": node})
        return
    res = spec.resources_per_trial.model_dump()
    threads = cfg.train.threads or max(1, int(res["cpu"]))
    scheduled = bool(spec.search and spec.search.scheduler == "asha")  # ASHA decides on every epoch
    should_stop = None
    if scheduled:
        board, tune_id = ray.get_actor(STOP_ACTOR), tune.get_context().get_trial_id()
        should_stop = lambda: ray.get(board.is_stopped.remote(tune_id))  # noqa: E731
    with torch_threads(threads):
        result = run_trial(cfg, device=assigned_device(res),
                           report=epoch_reporter(lambda row: tune.report({**epoch_metrics(row), "node_id": node}),
                                                 every_s=0.0 if scheduled else spec.progress_every_s,
                                                 should_stop=should_stop),
                           generator_cache=default_generator_cache(spec.storage),
                           lock_factory=functools.partial(ray_lock, lease_s=spec.lease_s))
    if optuna_number is not None:
        result.trial["optuna_trial_number"] = int(optuna_number)
    if len(result.epochs) < cfg.train.epochs:  # stopped early: the model as it stood, evaluated
        result.trial["status"] = "stopped"
    write_trial(spec.root, result)  # a full disk: StorageFullError naming the trial's file
    tune.report({**final_metrics(result.trial, result.epochs[-1] if result.epochs else None, skipped=False),
                 "node_id": node})


def fused_trainable(params: dict, *, spec_json: str, base_dir: str | None = None) -> None:
    """What Ray Tune runs for a group of fused trials (sweep key `fuse`): the members without
    rows train as one stacked network (`run_trials`); each finished member's rows are written
    under its own trial_id, and a member that failed alone (e.g. a NaN loss) is recorded in
    failed/ alone (its id goes to the driver in `failed_ids`). Progress rows to Tune are the
    first member's; the last report says how the members ended."""
    from ray import tune

    from git_ray.results import trial_exists, write_failure, write_trial
    from git_ray.trial import default_generator_cache, run_trials, torch_threads

    spec = SweepSpec.model_validate_json(spec_json)
    cfgs = [local_paths_absolute(spec.trial_config(p), base_dir) for p in params[FUSED_KEY]]
    node = node_id()
    # The driver sends only members without rows; a Ray retry or a concurrent run may have
    # written some since.
    todo = [c for c in cfgs if not trial_exists(spec.root, c.fingerprint())]
    res = spec.resources_per_trial.model_dump()
    finished, failed_ids = 0, []
    if todo:
        progress = epoch_reporter(lambda row: tune.report({**epoch_metrics(row), "members": len(todo),
                                                           "node_id": node}), every_s=spec.progress_every_s)
        with torch_threads(todo[0].train.threads or max(1, int(res["cpu"]))):
            results = run_trials(todo, device=assigned_device(res), reports=[progress] + [None] * (len(todo) - 1),
                                 generator_cache=default_generator_cache(spec.storage),
                                 lock_factory=functools.partial(ray_lock, lease_s=spec.lease_s))
        for cfg, result in zip(todo, results):
            if isinstance(result, Exception):
                write_failure(spec.root, cfg.fingerprint(), cfg, f"{type(result).__name__}: {result}", attempts=1)
                failed_ids.append(cfg.fingerprint())
            else:
                write_trial(spec.root, result)  # a full disk: StorageFullError naming the trial's file
                finished += 1
    tune.report({"done": True, "members": len(cfgs), "finished": finished, "skipped": len(cfgs) - len(todo),
                 "failed_members": len(failed_ids), "failed_ids": failed_ids, "node_id": node})


def fused_space(spec: SweepSpec, points: list[dict[str, Any]]) -> dict[str, Any]:
    """A Tune param space with one trial per fused group of `points` (the missing ones)."""
    from ray import tune

    return {FUSED_KEY: tune.grid_search(spec.fused_groups(points))}


def trial_points(config: dict) -> list[dict[str, Any]]:
    """The sweep points a Tune trial's config stands for: a fused group's members, or itself."""
    return list(config[FUSED_KEY]) if FUSED_KEY in config else [_params(config)]


def pretrain_generator(cfg_json: str | list[str], cache: str, resources: dict[str, float], lease_s: float = 60.0,
                       steps_log: bool = False) -> str:
    """Phase 0 task: train (or find) one generator, or a fused group of them (a list of trial
    configs: `get_generators`, stacked on a GPU), so that the trials only load them. Each member
    keeps its own lock lease; one whose lock another holder has is waited for after the others.
    A member that fails is reported after the others are stored (the task then raises). Step
    lines (losses every 10% of training) are printed only with `steps_log` (--verbose)."""
    from git_ray.config import TrialConfig
    from git_ray.data import build_dataset
    from git_ray.generative import get_generator
    from git_ray.generative.cache import get_generators, generator_fingerprint
    from git_ray.trial import torch_threads

    cfgs = [TrialConfig.model_validate_json(c) for c in ([cfg_json] if isinstance(cfg_json, str) else cfg_json)]
    device = assigned_device(resources)
    lock = functools.partial(ray_lock, lease_s=lease_s)
    log = lambda m: None if m.startswith("generator step") and not steps_log \
        else print(f"[generator] {m}", flush=True)  # noqa: E731
    with torch_threads(max(1, int(resources["cpu"]))):
        datas = [build_dataset(cfg.dataset).to(device) for cfg in cfgs]
        if len(cfgs) == 1:
            get_generator(datas[0], cfgs[0].generator, cache=cfgs[0].generator.cache or cache, device=device,
                          lock_factory=lock, log=log)
            return cfgs[0].dataset.source
        results = get_generators(list(zip(datas, [c.generator for c in cfgs])), cache=cache, device=device,
                                 lock_factory=lock, log=log)
    failed = [f"{generator_fingerprint(d.fingerprint, c.generator)}: {type(r).__name__}: {r}"
              for d, c, r in zip(datas, cfgs, results) if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cfgs)} fused generator(s) failed (the others are stored): "
                           + "; ".join(failed))
    return cfgs[0].dataset.source


def _params(config: dict) -> dict:
    """A Tune trial's config without Tune's and the searchers' own "__" keys: the sweep point."""
    return {k: v for k, v in config.items() if not k.startswith("__")}
