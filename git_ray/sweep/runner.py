"""The sweep driver. Sweep file -> Ray Tune: param space, resources, generators, search, resume, faults.

The driver's phases:
  1. validate the sweep file completely (before Ray starts),
  2. take the sweep's driver lease (`<sweep>/_driver.json`: one driver per sweep),
  3. reconcile the sweep's full trial list against the Parquet files (a trial is done when its
     trials, per_class and epochs files all read): only the missing trials will run,
  4. start or join Ray, write the resolved sweep file and the environment beside the results,
  5. train every distinct generator the grid needs once, as parallel Ray tasks (phase 0; with
     `fuse` > 1, those of one architecture and image shape train fused, `fuse` to a task),
  6. run the missing trials with a fresh Tuner (never Tune's saved state: it can be stale or
     damaged, and the Parquet files say what is done),
  7. reconcile again: the counts and the exit status come from the files, not from Tune.
With `fuse` > 1 (a grid), the missing trials are cut into fused groups (`SweepSpec.fused_groups`),
one Tune trial each (`fused_trainable`, `git_ray.trial.run_trials`): each member writes its own
rows under its own trial_id, and a member that fails alone is recorded in failed/ alone.
The trainables, the phase 0 task and the lock / early-stop actors are in `git_ray.sweep.worker`
(what runs in Ray's worker processes); this module is the driver.
Each trial is `git_ray.trial.run_trial` inside `trial_trainable`; it writes its own rows to the
sweep's storage, so results survive the driver, and a trial already in the results is not run
again (resume, re-runs on the same storage, Ray retries). A trial that ASHA stops early is
evaluated as it stands and written with status `stopped` (pruned in the Optuna study).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


from git_ray import __version__, storage
from git_ray.config import ConfigError, stable_hash
from git_ray.lease import Lease
from git_ray.sweep.spec import SweepSpec, load_sweep
from git_ray.sweep.worker import (LOCK_ACTOR, STOP_ACTOR, LockTable, StopBoard, fused_space, fused_trainable,
                                 local_paths_absolute, pretrain_generator, trial_points, trial_trainable)

TUNE_DIR = "_tune"  # Ray Tune's logs, one folder per driver run, inside the sweep folder
DRIVER_LEASE = "_driver.json"  # who runs this sweep now (git_ray.lease record)
EXIT_INTERRUPTED = 130  # the shell's convention for a command ended by Ctrl-C (128 + SIGINT)


# ---------------------------------------------------------------------------------------------
# The driver


def generator_key(cfg) -> str:
    d = cfg.model_dump()
    d["dataset"].pop("root")
    d["generator"].pop("cache")
    return stable_hash([d["dataset"], d["generator"]])


def generator_groups(spec: SweepSpec, cfgs: list | None = None) -> list[list]:
    """The distinct generators (`distinct_generators`, or `cfgs`) in phase 0's tasks: those that
    may train stacked (`git_ray.generative.fused.fuse_key`: same architecture, batch, lr, steps
    and image shape) cut into groups of at most the sweep's `fuse_size`, in order."""
    from git_ray.generative.fused import fuse_key

    return spec.cut_into_groups(distinct_generators(spec) if cfgs is None else cfgs,
                                lambda cfg: fuse_key(cfg.generator, (cfg.dataset.source, cfg.dataset.image_size)))


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


def points_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A Tune param space that runs exactly `points`: a grid over their indices, every key of a
    point filled in from it (so each trial's config shows its own keys and values)."""
    from ray import tune

    space: dict[str, Any] = {"__point": tune.grid_search(list(range(len(points))))}
    for key in points[0] if points else ():
        # Ray 2.60 passes the config itself (the spec-dict form logs a deprecation per trial).
        space[key] = tune.sample_from(lambda config, key=key: points[config["__point"]][key])
    return space


def search_space(spec: SweepSpec) -> dict[str, Any]:
    """The Optuna search's space as Tune distributions."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dist in spec.search.space.items():
        kind, args = next(iter(dist.items()))
        space[key] = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                      "int": lambda a: tune.randint(int(a[0]), int(a[1]) + 1),
                      "choice": tune.choice}[kind](args)
    return space


def make_searcher(spec: SweepSpec, seed_offset: int = 0):
    """OptunaSearch on the sweep's study. The sampler's seed is search.seed plus the number of
    trials the study already has: a re-run draws new points instead of repeating the first run's
    (which would find their rows and add nothing)."""
    if not spec.search or spec.search.algorithm != "optuna":
        return None
    import optuna

    from git_ray.sweep.optuna_search import LinkedOptunaSearch
    from git_ray.sweep.optuna_storage import open_storage

    class PruningOptunaSearch(LinkedOptunaSearch):
        """Tells the study PRUNED for a trial the scheduler stopped early (it still has rows)."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if result and result.get("stopped"):
                result, error = None, False  # OptunaSearch tells a trial without a value as PRUNED
            super().on_trial_complete(trial_id, result, error)

    concurrency = spec.max_concurrent_trials or 4
    sampler = optuna.samplers.TPESampler(n_startup_trials=max(concurrency, 5), seed=spec.search.seed + seed_offset)
    # The study is created or continued (load_if_exists): a re-run picks up where it stopped.
    return PruningOptunaSearch(metric=spec.search.tune_metric, mode=spec.search.mode, sampler=sampler,
                               study_name=spec.search.study_name or spec.name,
                               storage=open_storage(spec.study_storage), spec=spec)


def make_scheduler(spec: SweepSpec, max_epochs: int, board=None):
    """ASHA on the validation metric. Its STOP becomes a note on `board` (the StopBoard actor)
    and a CONTINUE to Tune: the trial sees the note after its epoch report, evaluates the model
    as it stands and writes its rows itself (Tune's own stop would end it without them)."""
    if not spec.search or spec.search.scheduler != "asha":
        return None
    import ray
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordedASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and board is not None and not result.get("done"):
                ray.get(board.stop.remote(trial.trial_id))
                return TrialScheduler.CONTINUE
            return decision

    return RecordedASHA(time_attr="training_iteration", max_t=max_epochs + 1,
                        grace_period=spec.search.grace_period, reduction_factor=spec.search.reduction_factor)


def make_progress_callback(spec: SweepSpec):
    """The one progress display (rich on a terminal, a line per trial elsewhere) + heartbeat."""
    from git_ray.sweep.progress import SweepProgress

    return SweepProgress(spec, verbose=spec.verbose > 0)


def write_sweep_metadata(spec: SweepSpec, argv: list[str]) -> None:
    import pyarrow
    import ray
    import torch

    storage.write_bytes(storage.join(spec.root, "sweep.yaml"), spec.to_yaml())
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


def init_ray(address: str | None, num_cpus: int | None, asked: dict[str, float] | None = None,
             verbose: int = 0) -> bool:
    """Start a local Ray or join `address`; for a cluster, check that one trial's `asked`
    resources fit one of its nodes (or a node type its autoscaler may start) before any work.
    True when this call started Ray (so the driver shuts it down)."""
    import ray

    from git_ray.sweep.progress import quiet_ray

    # Tune's newer console output prints its experiment box even at verbose 0; its older
    # reporter at verbose 0 prints nothing, leaving the screen to git_ray's progress display.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    if ray.is_initialized():
        return False
    quiet_ray()
    # Ray starts trial workers at nice 15: on a machine also busy with other work they then get
    # almost no CPU (seen here: 8 s of CPU in 144 s of sweep). A sweep's trials are the work.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--address {address}: no Ray cluster to join ({first}); start one "
                              f"(`ray start --head`, or `ray up cluster.yaml`), or leave --address "
                              f"out to run a local Ray on this machine") from None
        if asked is not None:
            from git_ray.sweep.resources import autoscaler_node_types, check_trials_fit, running_cluster

            try:
                check_trials_fit(asked, running_cluster(), where="this Ray cluster",
                                 node_types=autoscaler_node_types())
            except ConfigError:
                ray.shutdown()  # we only joined: the cluster itself stays up
                raise
    else:  # a fresh local Ray, never some other Ray that happens to run on this machine
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return True


def pretrain_generators(spec: SweepSpec, beat: Callable[[], None] | None = None) -> None:
    """Phase 0: every distinct generator as a Ray task; `beat` (the driver's heartbeat) is
    called every few seconds while they train, so `git-ray status` sees the driver alive."""
    import ray

    from git_ray.trial import default_generator_cache

    todo = distinct_generators(spec)
    if not todo:
        return
    res = spec.resources_per_trial.model_dump()
    groups = generator_groups(spec, todo)
    fused = f" in {len(groups)} fused task(s)" if len(groups) < len(todo) else ""
    print(f"[git-ray] phase 0: {len(todo)} distinct generator(s) to train or find in the cache{fused}", flush=True)
    task = ray.remote(num_cpus=res["cpu"], num_gpus=res["gpu"], max_retries=spec.max_failures)(pretrain_generator)
    cache = default_generator_cache(spec.storage)
    start = time.perf_counter()
    base_dir = os.getcwd()
    as_json = lambda cfg: local_paths_absolute(cfg, base_dir).model_dump_json()  # noqa: E731
    # One task per group; a group of one is the plain task of one generator (CPU sweeps: as before).
    refs = [task.remote(as_json(g[0]) if len(g) == 1 else [as_json(c) for c in g], cache, res, spec.lease_s,
                        spec.verbose > 0)
            for g in groups]
    waiting = list(refs)
    while waiting:
        if beat is not None:
            beat()
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=5.0)
    ray.get(refs)  # raises a task's error, if any
    print(f"[git-ray] phase 0 done in {time.perf_counter() - start:.1f}s", flush=True)


def absolute_storage(spec: SweepSpec) -> SweepSpec:
    """A local `storage` as an absolute path: Ray Tune needs one, and trials run elsewhere."""
    if storage.is_remote(spec.storage):
        return spec
    local = spec.storage.removeprefix("file://")
    return spec.model_copy(update={"storage": os.path.abspath(os.path.expanduser(local))})


@dataclass
class Ledger:
    """What the Parquet files say about a sweep: how many of its planned trials have rows."""

    planned: int  # trials of the sweep (distinct configs; for Optuna: num_samples)
    done: set[str] = field(default_factory=set)  # ids of its trials with all three files readable
    counted: int = 0  # of the planned trials, how many are done (Optuna: study trials with rows)
    status: dict[str, str] = field(default_factory=dict)  # id -> "ok" / "stopped"
    study_trials: int = 0  # Optuna: trials in the study, whatever their state


def take_stock(spec: SweepSpec, points: list[dict[str, Any]] | None) -> Ledger:
    """Reconcile the sweep's trial list against its Parquet files."""
    from git_ray.results.store import complete_trial_status

    status = complete_trial_status(spec.root)
    if points is not None:
        planned = {spec.trial_config(p).fingerprint() for p in points}
        done = planned & set(status)
        return Ledger(planned=len(planned), done=done, counted=len(done), status=status)
    done = set(status)
    counted, total = settle_study(spec, done)
    return Ledger(planned=spec.search.num_samples, done=done, counted=counted, status=status, study_trials=total)


def settle_study(spec: SweepSpec, done: set[str]) -> tuple[int, int]:
    """Bring an Optuna study in line with the Parquet files; return (its trials that have rows,
    all its trials).

    Trials a killed driver left RUNNING are told now (this driver holds the sweep's lease, so no
    one else runs them): COMPLETE with their stored value if their rows are there (PRUNED if they
    were stopped early), else FAIL, so that the sampler sees them and they are run again."""
    import optuna

    from git_ray.results import read_trial
    from git_ray.sweep.optuna_storage import open_storage

    try:
        study = optuna.load_study(study_name=spec.search.study_name or spec.name,
                                  storage=open_storage(spec.study_storage))
    except KeyError:  # no study yet
        return 0, 0
    counted = 0
    state = optuna.trial.TrialState
    for t in study.get_trials(deepcopy=False):
        try:
            fp = spec.trial_config(t.params).fingerprint()
        except ConfigError:  # a trial without all its params: never ran
            fp = None
        if t.state == state.RUNNING:
            stored = read_trial(spec.root, fp) if fp in done else None
            if stored is None:
                study.tell(t.number, state=state.FAIL)
                continue
            if stored["trial"].get("status") == "stopped":
                study.tell(t.number, state=state.PRUNED)
            else:
                study.tell(t.number, stored["last_epoch"][spec.search.tune_metric])
            counted += 1
        elif t.state in (state.COMPLETE, state.PRUNED) and fp in done:
            counted += 1
    return counted, len(study.trials)


def sweep_is_running_error(spec: SweepSpec, holder) -> ConfigError:
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.started_at))
    return ConfigError(
        f"sweep {spec.name!r} is being run by {holder.holder} since {since} (its last heartbeat "
        f"{holder.age_s():.0f} s ago, in {storage.join(spec.root, DRIVER_LEASE)}); wait for it or, if "
        f"it died, run again after {max(0.0, holder.term_s - holder.age_s()):.0f} s "
        f"(lease_s: {holder.term_s:g} s without a heartbeat)")


def run_sweep(spec: SweepSpec, *, resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, argv: list[str] | None = None,
              extra_callbacks: list | None = None, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Run the trials of a validated sweep that have no rows yet; return the counts of the
    reconciliation after the run: planned, finished (now), skipped (already there), stopped
    (early, by ASHA), failed, missing (no rows, not failed), interrupted (1 after Ctrl-C)."""
    log = log or (lambda m: print(f"[git-ray] {m}", flush=True))
    spec = absolute_storage(spec)
    if resume and not storage.exists(storage.join(spec.root, "sweep.yaml")):
        raise ConfigError(f"--resume: no sweep was started at {spec.root}; "
                          f"run `git-ray sweep` without --resume to start it")
    new_folder = None if storage.is_remote(spec.root) else _first_missing(spec.root)
    lease = Lease(storage.join(spec.root, DRIVER_LEASE), spec.lease_s, log=lambda m: log(m))
    holder = lease.try_acquire()
    if holder is not None:
        raise sweep_is_running_error(spec, holder)
    lease.start_heartbeat()
    try:
        return _run_leased(spec, resume=resume, address=address, num_cpus=num_cpus, argv=argv,
                           extra_callbacks=extra_callbacks, log=log)
    finally:
        lease.release()
        if new_folder:  # a run that stopped before writing anything leaves no folder behind
            _remove_if_only_lease_left(new_folder)


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None if `path` exists)."""
    path, missing = os.path.abspath(path), None
    while not os.path.exists(path):
        missing, parent = path, os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _remove_if_only_lease_left(folder: str) -> None:
    """Remove `folder`, which this run created, if it holds nothing but the lease's mutex file
    (a preflight error after the lease was taken: nothing was written)."""
    found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]
    if all(os.path.basename(f) == f".{DRIVER_LEASE}.mutex" for f in found):
        shutil.rmtree(folder, ignore_errors=True)


def _run_leased(spec: SweepSpec, *, resume: bool, address: str | None, num_cpus: int | None,
                argv: list[str] | None, extra_callbacks: list | None, log: Callable[[str], None]) -> dict[str, int]:
    points = spec.planned_points()
    before = take_stock(spec, points)
    todo = [p for p in points if spec.trial_config(p).fingerprint() not in before.done] \
        if points is not None else None
    remaining = len(todo) if todo is not None else max(0, before.planned - before.counted)
    log(f"{'resuming: ' if resume else ''}{before.counted} of {before.planned} trial(s) already have their "
        f"rows in {spec.root}; {remaining} to run")
    counts = {"planned": before.planned, "finished": 0, "skipped": before.counted, "stopped": 0,
              "failed": 0, "missing": remaining, "interrupted": 0}
    if remaining == 0:
        return counts

    import ray

    from git_ray.results import trial_exists, write_failure

    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C: KeyboardInterrupt, ours to handle
    started_ray = init_ray(address, num_cpus, spec.resources_per_trial.model_dump(), spec.verbose)
    failed_ids: set[str] = set()
    actors = []
    try:
        write_sweep_metadata(spec, argv or sys.argv)
        actors.append(ray.remote(num_cpus=0)(LockTable).options(name=LOCK_ACTOR, get_if_exists=True).remote())
        board = None
        if spec.search and spec.search.scheduler == "asha":
            board = ray.remote(num_cpus=0)(StopBoard).options(name=STOP_ACTOR, get_if_exists=True).remote()
            actors.append(board)
        progress = make_progress_callback(spec)
        progress.total, progress.counts["already"] = before.planned, before.counted  # the reconciliation's
        pretrain_generators(spec, beat=lambda: progress.write_heartbeat(phase="generators"))
        grid = make_tuner(spec, todo, remaining, board, extra_callbacks, progress,
                          seed_offset=before.study_trials).fit()
        for r in grid:
            # fused members that failed alone: recorded in failed/ by their group's trainable
            failed_ids.update((r.metrics or {}).get("failed_ids") or [])
            if r.error is None:
                continue
            for point in trial_points(r.config):  # a fused group fails for its members without rows
                cfg = spec.trial_config(point)
                if trial_exists(spec.root, cfg.fingerprint()):
                    continue
                failed_ids.add(cfg.fingerprint())
                try:
                    write_failure(spec.root, cfg.fingerprint(), cfg, f"{type(r.error).__name__}: {r.error}",
                                  attempts=spec.max_failures + 1)
                except OSError as err:  # storage down or full: the count below still says it
                    log(f"warning: could not record failed trial {cfg.fingerprint()} in failed/: {err}")
    except KeyboardInterrupt:
        counts["interrupted"] = 1
        log("interrupted (Ctrl-C): stopping the sweep")
    finally:
        for actor in actors:
            with _quiet():
                ray.kill(actor)
        if started_ray and counts["interrupted"]:
            with _quiet():
                ray.shutdown()  # ends the running trials now: they would finish after our count

    after = take_stock(spec, points)
    new = after.done - before.done
    counts["stopped"] = sum(1 for tid in new if after.status.get(tid) == "stopped")
    counts["finished"] = max(0, after.counted - before.counted - counts["stopped"])
    counts["failed"] = len(failed_ids - after.done)
    counts["missing"] = max(0, after.planned - after.counted - counts["failed"])
    return counts


@contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except Exception:  # best-effort clean-up of Ray objects that may be gone already
        pass


def make_tuner(spec: SweepSpec, todo: list[dict[str, Any]] | None, remaining: int, board,
               extra_callbacks: list | None, progress, seed_offset: int = 0):
    """A fresh Tuner for exactly the trials still to run: the missing points of a grid or random
    search, or `remaining` more samples of an Optuna search (its study continues)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    # Parquet is the record. Of Tune's own copies of every report keep only the JSON one, which
    # Tune reads back to build its result grid; CSV and TensorBoard files would be written for
    # nobody (TensorBoard's logger alone takes 0.3 s to set up). Set it to 0 to have them all.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    tune_loggers = [JsonLoggerCallback()] if os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" else []
    res = spec.resources_per_trial
    fused = spec.fuse_size > 1
    trainable = tune.with_resources(functools.partial(fused_trainable if fused else trial_trainable,
                                                      spec_json=spec.model_dump_json(), base_dir=os.getcwd()),
                                    {"cpu": res.cpu, "gpu": res.gpu})
    max_epochs = max((c.train.epochs for c in spec.trial_configs()), default=1)
    metric = spec.search.tune_metric if spec.search else None
    optuna = todo is None
    return tune.Tuner(
        trainable,
        param_space=search_space(spec) if optuna else fused_space(spec, todo) if fused else points_space(todo),
        tune_config=tune.TuneConfig(
            metric=metric, mode=spec.search.mode if spec.search else None,
            search_alg=make_searcher(spec, seed_offset), scheduler=make_scheduler(spec, max_epochs, board),
            num_samples=remaining if optuna else 1,
            max_concurrent_trials=spec.max_concurrent_trials, reuse_actors=True),
        run_config=tune.RunConfig(
            # One folder per driver run: Tune's saved state is never read back (see the module doc).
            name=time.strftime("run-%Y%m%d-%H%M%S-") + str(os.getpid()),
            storage_path=storage.join(spec.root, TUNE_DIR), verbose=spec.verbose,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[progress, *tune_loggers, *(extra_callbacks or [])]),
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    spec = getattr(args, "spec", None) or load_sweep(args.sweep, storage=args.storage,
                                                      max_concurrent=args.max_concurrent)
    if getattr(args, "verbose", False):  # Ray Tune's own tables back, plain lines from us
        spec = spec.model_copy(update={"verbose": max(spec.verbose, 2)})
    print(f"[git-ray] sweep {spec.name!r}: {spec.num_trials()} trial(s), "
          f"{spec.resources_per_trial.cpu:g} CPU / {spec.resources_per_trial.gpu:g} GPU each, "
          f"results in {spec.root}", flush=True)
    start = time.perf_counter()
    rerun = f"git-ray {' '.join(sys.argv[1:])}" if sys.argv[1:2] == ["sweep"] else f"git-ray sweep {args.sweep}"
    try:
        counts = run_sweep(spec, resume=args.resume, address=args.address, num_cpus=args.num_cpus,
                           argv=sys.argv)
    except KeyboardInterrupt:
        print(f"[git-ray] interrupted before any trial ran; run `{rerun}` to start again", flush=True)
        return EXIT_INTERRUPTED
    except storage.StorageFullError as err:  # the storage layer's one word for a full disk, naming the file
        print(f"[git-ray] error: the disk holding {spec.root} is full ({err}); free space and run "
              f"`{rerun}` again: trials with rows are kept and not run again", file=sys.stderr, flush=True)
        return 1
    wall = time.perf_counter() - start
    missing = counts["missing"] + counts["failed"]
    print(f"[git-ray] sweep {spec.name!r} {'interrupted' if counts['interrupted'] else 'done'} after "
          f"{wall:.0f}s: {counts['finished']} finished now, {counts['skipped']} already there, "
          f"{counts['stopped']} stopped early (with rows), {counts['failed']} failed, "
          f"{counts['missing']} missing, of {counts['planned']}", flush=True)
    print(f"[git-ray] results: {spec.root}/ (trials/, per_class/, epochs/"
          f"{', failed/' if counts['failed'] else ''}); analyse with: git-ray analyze {spec.root}")
    if missing:
        print(f"[git-ray] {missing} trial(s) have no rows; run `{rerun}` (or add --resume) to run "
              f"exactly those", flush=True)
    if counts["interrupted"]:
        return EXIT_INTERRUPTED
    return 1 if missing else 0
