"""Sweep file -> Ray Tune: param space, trainable, resources, generators, search, resume, faults.

The driver's phases:
  1. validate the sweep file completely (before Ray starts),
  2. start or join Ray, write the resolved sweep file and the environment beside the results,
  3. train every distinct generator the grid needs once, as parallel Ray tasks (phase 0),
  4. run the trials with a Tuner (or restore an interrupted one with --resume),
  5. record trials that failed after their retries, print a summary, exit 1 if any failed.
Each trial is `git_ray.trial.run_trial` inside `trial_trainable`; it writes its own rows to the
sweep's storage, so results survive the driver, and a trial already in the results is not run
again (resume, re-runs on the same storage, Ray retries).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import yaml

from git_ray import __version__, storage
from git_ray.config import ConfigError, stable_hash
from git_ray.sweep.spec import SweepSpec, load_sweep

TUNE_DIR = "_tune"  # Ray Tune's experiment state, inside the sweep folder (ignored by readers)
LOCK_ACTOR = "git_ray_generator_locks"


# ---------------------------------------------------------------------------------------------
# Inside a trial (runs in a Ray worker process)


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
def ray_lock(key: str, poll_s: float = 1.0) -> Iterator[None]:
    """Hold a sweep-wide lock on `key` through the driver's lock actor (works across nodes)."""
    import ray

    actor = ray.get_actor(LOCK_ACTOR)
    token = os.urandom(8).hex()
    while not ray.get(actor.acquire.remote(key, token)):
        time.sleep(poll_s)
    try:
        yield
    finally:
        ray.get(actor.release.remote(key, token))


class LockTable:
    """A Ray actor: who holds which generator fingerprint."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def acquire(self, key: str, token: str) -> bool:
        if self.held.get(key, token) != token:
            return False
        self.held[key] = token
        return True

    def release(self, key: str, token: str) -> None:
        if self.held.get(key) == token:
            del self.held[key]


def epoch_metrics(row: dict) -> dict:
    return {k: row[k] for k in ("epoch", "train_loss", "train_accuracy", "val_accuracy",
                                "val_balanced_accuracy")}


def final_metrics(trial_row: dict, last_epoch: dict | None, skipped: bool) -> dict:
    out = {f"test_{k}": trial_row[k] for k in ("accuracy", "balanced_accuracy", "few_accuracy")}
    out.update({k: trial_row[k] for k in ("ekld_mean", "ekld_tail", "ekld_size_spearman", "train_seconds")})
    out.update(epoch_metrics(last_epoch) if last_epoch else {})
    out.update(trial_id=trial_row["trial_id"], skipped=skipped, done=True)
    return out


def epoch_reporter(send: Callable[[dict], None], every_s: float,
                   clock: Callable[[], float] = time.monotonic) -> Callable[[dict], None]:
    """`send` for the first epoch row and then at most one row per `every_s` seconds.

    Every `tune.report` is a round trip to the driver (about 6 ms here, 40 of them in a
    quickstart trial); without a scheduler Tune only shows these rows as progress, the epochs
    table keeps them all, and the trial's final report always carries its last epoch."""
    last = [-math.inf]

    def report(row: dict) -> None:
        now = clock()
        if now - last[0] >= every_s:
            last[0] = now
            send(row)

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
    from ray import tune

    from git_ray.results import read_trial, write_trial
    from git_ray.trial import default_generator_cache, run_trial, torch_threads

    spec = SweepSpec.model_validate_json(spec_json)
    cfg = local_paths_absolute(spec.trial_config(params), base_dir)
    node = node_id()
    stored = read_trial(spec.root, cfg.fingerprint())
    if stored is not None:  # finished earlier (resume, re-run, retry after the write)
        tune.report({**final_metrics(stored["trial"], stored["last_epoch"], skipped=True), "node_id": node})
        return
    res = spec.resources_per_trial.model_dump()
    threads = cfg.train.threads or max(1, int(res["cpu"]))
    every_epoch = bool(spec.search and spec.search.scheduler)  # ASHA decides on every epoch
    with torch_threads(threads):
        result = run_trial(cfg, device=assigned_device(res),
                           report=epoch_reporter(lambda row: tune.report({**epoch_metrics(row), "node_id": node}),
                                                 every_s=0.0 if every_epoch else spec.progress_every_s),
                           generator_cache=default_generator_cache(spec.storage),
                           lock_factory=ray_lock)
    write_trial(spec.root, result)
    tune.report({**final_metrics(result.trial, result.epochs[-1] if result.epochs else None, skipped=False),
                 "node_id": node})


FUSED_KEY = "fused_members"  # the one param-space axis of a fused sweep: a group's grid points


def fused_trainable(params: dict, *, spec_json: str, base_dir: str | None = None) -> None:
    """What Ray Tune runs for a group of fused trials (sweep key `fuse`): the members without
    rows train as one stacked network (`run_trials`); each finished member's rows are written
    under its own trial_id, and a member that failed alone (e.g. a NaN loss) is recorded in
    failed/ alone. Progress rows to Tune are the first member's; the last report counts."""
    from ray import tune

    from git_ray.results import trial_exists, write_failure, write_trial
    from git_ray.trial import default_generator_cache, run_trials, torch_threads

    spec = SweepSpec.model_validate_json(spec_json)
    cfgs = [local_paths_absolute(spec.trial_config(p), base_dir) for p in params[FUSED_KEY]]
    node = node_id()
    todo = [c for c in cfgs if not trial_exists(spec.root, c.fingerprint())]  # resume, re-run, retry
    res = spec.resources_per_trial.model_dump()
    finished = failed = 0
    if todo:
        progress = epoch_reporter(lambda row: tune.report({**epoch_metrics(row), "members": len(todo),
                                                           "node_id": node}), every_s=spec.progress_every_s)
        with torch_threads(todo[0].train.threads or max(1, int(res["cpu"]))):
            results = run_trials(todo, device=assigned_device(res), reports=[progress] + [None] * (len(todo) - 1),
                                 generator_cache=default_generator_cache(spec.storage), lock_factory=ray_lock)
        for cfg, result in zip(todo, results):
            if isinstance(result, Exception):
                write_failure(spec.root, cfg.fingerprint(), cfg, f"{type(result).__name__}: {result}", attempts=1)
                failed += 1
            else:
                write_trial(spec.root, result)
                finished += 1
    tune.report({"done": True, "members": len(cfgs), "finished": finished, "skipped": len(cfgs) - len(todo),
                 "failed_members": failed, "node_id": node})


def fused_param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    return {FUSED_KEY: tune.grid_search(spec.fused_groups())}


def count_fused_results(spec: SweepSpec, grid) -> dict[str, int]:
    """Per-member counts of a fused sweep's result grid; the members of a group that failed
    for good (after its retries) without rows are recorded in failed/."""
    from git_ray.results import trial_exists, write_failure

    counts = {"finished": 0, "skipped": 0, "stopped": 0, "failed": 0}
    for r in grid:
        m = r.metrics or {}
        if r.error is None and m.get("done"):
            counts["finished"] += m["finished"]
            counts["skipped"] += m["skipped"]
            counts["failed"] += m["failed_members"]
            continue
        for params in r.config[FUSED_KEY]:
            cfg = spec.trial_config(params)
            if trial_exists(spec.root, cfg.fingerprint()):
                counts["finished"] += 1
            elif r.error is not None:
                write_failure(spec.root, cfg.fingerprint(), cfg, f"{type(r.error).__name__}: {r.error}",
                              attempts=spec.max_failures + 1)
                counts["failed"] += 1
            else:
                counts["stopped"] += 1
    return counts


def pretrain_generator(cfg_json: str, cache: str, resources: dict[str, float]) -> str:
    """Phase 0 task: train (or find) one generator so that the trials only load it."""
    from git_ray.config import TrialConfig
    from git_ray.data import build_dataset
    from git_ray.generative import get_generator
    from git_ray.trial import torch_threads

    cfg = TrialConfig.model_validate_json(cfg_json)
    device = assigned_device(resources)
    with torch_threads(max(1, int(resources["cpu"]))):
        data = build_dataset(cfg.dataset).to(device)
        get_generator(data, cfg.generator, cache=cfg.generator.cache or cache, device=device,
                      lock_factory=ray_lock, log=lambda m: print(f"[generator] {m}", flush=True))
    return cfg.dataset.source


# ---------------------------------------------------------------------------------------------
# The driver


def generator_key(cfg) -> str:
    d = cfg.model_dump()
    d["dataset"].pop("root")
    d["generator"].pop("cache")
    return stable_hash([d["dataset"], d["generator"]])


def distinct_generators(spec: SweepSpec) -> list:
    """One trial config per distinct generator the grid needs (empty when the search space
    changes data or generator settings: those trials train theirs under the sweep's lock)."""
    if spec.search and any(k.split(".")[0] in ("dataset", "generator") for k in spec.search.space):
        return []
    seen: dict[str, Any] = {}
    for cfg in spec.trial_configs():
        if cfg.augment.git:
            seen.setdefault(generator_key(cfg), cfg)
    return list(seen.values())


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {k: tune.grid_search(v) for k, v in spec.grid.items()}
    if spec.search:
        for key, dist in spec.search.space.items():
            kind, args = next(iter(dist.items()))
            space[key] = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                          "int": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),
                          "choice": tune.choice}[kind](args)
    return space


def make_searcher(spec: SweepSpec):
    if not spec.search or spec.search.algorithm != "optuna":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from git_ray.sweep.optuna_storage import open_storage

    concurrency = spec.max_concurrent_trials or 4
    sampler = optuna.samplers.TPESampler(n_startup_trials=max(concurrency, 5), seed=spec.search.seed)
    return OptunaSearch(metric=spec.search.tune_metric, mode=spec.search.mode, sampler=sampler,
                        study_name=spec.search.study_name or spec.name,
                        storage=open_storage(spec.study_storage))


def make_scheduler(spec: SweepSpec, max_epochs: int):
    if not spec.search or spec.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=max_epochs + 1,
                         grace_period=spec.search.grace_period, reduction_factor=spec.search.reduction_factor)


def make_progress_callback(spec: SweepSpec):
    from ray import tune

    axes = list(spec.grid) + (list(spec.search.space) if spec.search else [])

    class TrialLines(tune.Callback):
        """One line per finished or failed trial: its key config and balanced accuracy."""

        def _label(self, trial) -> str:
            parts = []
            for k in axes:
                v = trial.config.get(k)
                if isinstance(v, dict):
                    v = "/".join(str(x) for x in v.values())
                elif isinstance(v, float):
                    v = f"{v:.4g}"
                parts.append(f"{k}={v}")
            return ", ".join(parts) or trial.trial_id

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            if "test_balanced_accuracy" in r:
                how = "already in results" if r.get("skipped") else f"{r.get('train_seconds', 0):.1f}s"
                print(f"[git-ray] finished {self._label(trial)}: balanced accuracy "
                      f"{r['test_balanced_accuracy']:.3f}, eKLD tail {r['ekld_tail']:.4f} ({how})", flush=True)
            else:
                print(f"[git-ray] stopped early {self._label(trial)} at epoch {r.get('epoch', '?')}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[git-ray] FAILED {self._label(trial)}: see the failed/ table", flush=True)

    return TrialLines()


def make_fused_progress_callback():
    from ray import tune

    class GroupLines(tune.Callback):
        """One line per finished or failed group of fused trials: how its members ended."""

        def on_trial_complete(self, iteration, trials, trial, **info):
            r = trial.last_result or {}
            if r.get("done"):
                print(f"[git-ray] fused group of {r['members']}: {r['finished']} finished, "
                      f"{r['skipped']} already in results, {r['failed_members']} failed", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"[git-ray] FAILED a fused group of {len(trial.config[FUSED_KEY])}: see the failed/ table",
                  flush=True)

    return GroupLines()


def write_sweep_metadata(spec: SweepSpec, argv: list[str]) -> None:
    import pyarrow
    import ray
    import torch

    storage.write_bytes(storage.join(spec.root, "sweep.yaml"),
                        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode())
    env = {"git_ray": __version__, "torch": torch.__version__, "ray": ray.__version__,
           "pyarrow": pyarrow.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "cuda": torch.version.cuda,
           "command": argv, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import optuna
        env["optuna"] = optuna.__version__
    except ImportError:  # pragma: no cover
        pass
    storage.write_bytes(storage.join(spec.root, "environment.json"), json.dumps(env, indent=2).encode())


def init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        ray.init(address=address, **kwargs)
    else:  # a fresh local Ray, never some other Ray that happens to run on this machine
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def pretrain_generators(spec: SweepSpec) -> None:
    import ray

    from git_ray.trial import default_generator_cache

    todo = distinct_generators(spec)
    if not todo:
        return
    res = spec.resources_per_trial.model_dump()
    print(f"[git-ray] phase 0: {len(todo)} distinct generator(s) to train or find in the cache", flush=True)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=spec.max_failures)(pretrain_generator)
    cache = default_generator_cache(spec.storage)
    start = time.perf_counter()
    base_dir = os.getcwd()
    ray.get([task.remote(local_paths_absolute(cfg, base_dir).model_dump_json(), cache, res) for cfg in todo])
    print(f"[git-ray] phase 0 done in {time.perf_counter() - start:.1f}s", flush=True)


def absolute_storage(spec: SweepSpec) -> SweepSpec:
    """A local `storage` as an absolute path: Ray Tune needs one, and trials run elsewhere."""
    if storage.is_remote(spec.storage):
        return spec
    local = spec.storage.removeprefix("file://")
    return spec.model_copy(update={"storage": os.path.abspath(os.path.expanduser(local))})


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, argv: list[str] | None = None,
              extra_callbacks: list | None = None) -> dict[str, int]:
    """Run (or resume) a validated sweep; return counts of finished/skipped/stopped/failed trials."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from git_ray.results import write_failure

    spec = absolute_storage(spec)
    exp_path = storage.join(spec.root, TUNE_DIR)
    # Parquet is the record. Of Tune's own copies of every report keep only the JSON one, which
    # Tune reads back to build its result grid; CSV and TensorBoard files would be written for
    # nobody (TensorBoard's logger alone takes 0.3 s to set up). Set it to 0 to have them all.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tune_loggers = [JsonLoggerCallback()] if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" else []
    init_ray(address, num_cpus)
    if resume and not tune.Tuner.can_restore(exp_path):
        raise ConfigError(f"--resume: no interrupted sweep to resume at {exp_path}; "
                          f"run `git-ray sweep` without --resume to start it")
    write_sweep_metadata(spec, argv or sys.argv)
    locks = ray.remote(num_cpus=0)(LockTable).options(name=LOCK_ACTOR, get_if_exists=True).remote()
    pretrain_generators(spec)

    res = spec.resources_per_trial
    fused = spec.fuse_size > 1
    trainable = tune.with_resources(functools.partial(fused_trainable if fused else trial_trainable,
                                                      spec_json=spec.model_dump_json(), base_dir=os.getcwd()),
                                    {"cpu": res.cpu, "gpu": res.gpu})
    if resume:
        print(f"[git-ray] resuming {exp_path}", flush=True)
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        max_epochs = max((c.train.epochs for c in spec.trial_configs()), default=1)
        metric = spec.search.tune_metric if spec.search else None
        tuner = tune.Tuner(
            trainable,
            param_space=fused_param_space(spec) if fused else param_space(spec),
            tune_config=tune.TuneConfig(
                metric=metric, mode=spec.search.mode if spec.search else None,
                search_alg=make_searcher(spec), scheduler=make_scheduler(spec, max_epochs),
                num_samples=spec.search.num_samples if spec.search else 1,
                max_concurrent_trials=spec.max_concurrent_trials, reuse_actors=True),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=spec.root, verbose=spec.verbose,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[make_fused_progress_callback() if fused else make_progress_callback(spec),
                           *tune_loggers, *(extra_callbacks or [])]),
        )
    grid = tuner.fit()

    counts = {"finished": 0, "skipped": 0, "stopped": 0, "failed": 0}
    for r in grid if not fused else []:
        if r.error is not None:
            cfg = spec.trial_config(_params(r.config))
            write_failure(spec.root, cfg.fingerprint(), cfg, f"{type(r.error).__name__}: {r.error}",
                          attempts=spec.max_failures + 1)
            counts["failed"] += 1
        elif (r.metrics or {}).get("done"):
            counts["skipped" if r.metrics.get("skipped") else "finished"] += 1
        else:
            counts["stopped"] += 1
    if fused:
        counts = count_fused_results(spec, grid)
    ray.kill(locks)
    return counts


def _params(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("__")}


def run_sweep_command(args: argparse.Namespace) -> int:
    spec = load_sweep(args.sweep, storage=args.storage, max_concurrent=args.max_concurrent)
    print(f"[git-ray] sweep {spec.name!r}: {spec.num_trials()} trial(s), "
          f"{spec.resources_per_trial.cpu:g} CPU / {spec.resources_per_trial.gpu:g} GPU each, "
          f"results in {spec.root}", flush=True)
    start = time.perf_counter()
    counts = run_sweep(spec, resume=args.resume, address=args.address, num_cpus=args.num_cpus,
                       argv=sys.argv)
    wall = time.perf_counter() - start
    print(f"[git-ray] sweep {spec.name!r} done in {wall:.0f}s: {counts['finished']} finished, "
          f"{counts['skipped']} already in results, {counts['stopped']} stopped early, "
          f"{counts['failed']} failed", flush=True)
    print(f"[git-ray] results: {spec.root}/ (trials/, per_class/, epochs/"
          f"{', failed/' if counts['failed'] else ''}); analyse with: git-ray analyze {spec.root}")
    return 1 if counts["failed"] else 0
