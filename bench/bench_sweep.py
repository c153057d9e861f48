"""Sweep efficiency: a Ray Tune sweep's wall time against the ideal, and Ray's overhead per trial.

    python -m bench.bench_sweep [--sweep sweeps/quickstart.yaml] [--trials 4] [--slots 2]
                                [--epochs N] [--git] [--keep]

Takes the quickstart sweep (or another sweep file), keeps its first `--trials` grid points
(without the GIT ones unless --git: generator training would dominate a short bench), and runs
those trials twice, on a fresh storage folder under /tmp (results/ is never touched):

1. directly: `git_ray.trial.run_trial` on each config in turn, in this process, with the thread
   count a sweep trial gets (its CPU share), then `write_trial` (timed apart);
2. in a process pool: the same trials `--slots` at a time in fresh spawned processes, no Ray
   (what this machine gives at that concurrency with a scheduler that costs nothing);
3. as a sweep: `git_ray.sweep.runner.run_sweep` on a local Ray of its own, `--slots` at a time.

Figures: ideal = sum of direct trial times / slots; wall / ideal (target <= 1.1); overhead per
trial = (wall x slots - sum of direct trial times) / trials (target < 2 s). That overhead mixes
two things, split apart: contention (run_trial's own time when `slots` trials share the machine
against alone: pool_trial_s_mean / direct_trial_s_mean; on a machine with fewer free cores than
slots it is > 1 whatever the scheduler) and Ray's own cost, ray_overhead_per_trial_s = (Ray wall
- pool wall) x slots / trials. Also: the time inside Ray's trial lifecycle outside run_trial
(worker start, the already-done check, result writing, reports) and the driver's fixed cost
(Tuner set-up, end). Ray's start-up (`ray.init`) is a once-per-sweep cost, reported apart.
`wall_over_in_sweep_ideal` divides by the trials' own times inside the sweep instead (sum of
their `train_seconds` / slots), which takes contention and the fresh workers' first-trial
warm-up (`first_trial_extra_s`: imports and first calls in a new process) out of the ratio.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from bench.common import machine_line, print_figures

FIGURES = ("trials", "slots", "direct_trial_s_mean", "ideal_s", "sweep_wall_s", "wall_over_ideal",
           "overhead_per_trial_s", "ray_init_s")


def smaller_sweep(path: str, storage: str, trials: int, slots: int, epochs: int | None, git: bool):
    """The sweep file's first `trials` grid points as a sweep of their own (an @-axis of the
    points as partial configs, so every trial's config is exactly the original's)."""
    from git_ray.config import deep_merge, set_dotted
    from git_ray.sweep.spec import SweepSpec, load_sweep

    spec = load_sweep(path, storage=storage, max_concurrent=slots)
    points = [p for p in spec.grid_points() if git or not spec.trial_config(p).augment.git][:trials]
    partials = []
    for p in points:
        partial: dict = {}
        for key, value in p.items():
            partial = deep_merge(partial, value) if key.startswith("@") else set_dotted(partial, key, value)
        partials.append(partial)
    base = dict(spec.base)
    if epochs is not None:  # a shorter schedule, kept valid (s1 <= s2 <= epochs)
        train = dict(base.get("train", {}))
        train.update(epochs=epochs, s1=min(train.get("s1", 0), epochs), s2=min(train.get("s2", 0), epochs),
                     warmup_epochs=min(train.get("warmup_epochs", 0), epochs))
        base["train"] = train
    data = spec.model_dump()
    data.update(name=f"{spec.name}_bench", base=base, grid={"@point": partials} if partials else {},
                max_concurrent_trials=slots, max_failures=0, verbose=0)
    return SweepSpec.model_validate(data)


def run_direct(spec, out_root: str) -> tuple[list[float], list[float], list[str]]:
    """run_trial on each config in turn (with a sweep trial's thread count), then write_trial."""
    from git_ray.results import write_trial
    from git_ray.trial import default_generator_cache, run_trial, torch_threads

    threads = max(1, int(spec.resources_per_trial.cpu))
    run_s, write_s, ids = [], [], []
    for cfg in spec.trial_configs():
        start = time.perf_counter()
        with torch_threads(cfg.train.threads or threads):
            result = run_trial(cfg, device="cpu", generator_cache=default_generator_cache(out_root))
        run_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        write_trial(out_root + "/direct", result)
        write_s.append(time.perf_counter() - start)
        ids.append(result.trial_id)
    return run_s, write_s, ids


def _pool_trial(cfg_json: str, threads: int, out_root: str) -> tuple[str, float]:
    """One trial in a pool worker (a fresh process, as a Ray worker is): run_trial + write_trial."""
    from git_ray.config import TrialConfig
    from git_ray.results import write_trial
    from git_ray.trial import default_generator_cache, run_trial, torch_threads

    cfg = TrialConfig.model_validate_json(cfg_json)
    with torch_threads(threads):
        result = run_trial(cfg, device="cpu", generator_cache=default_generator_cache(out_root))
    write_trial(out_root + "/pool", result)
    return result.trial_id, float(result.trial["train_seconds"])


def _profiled_trial(cfg_json: str, threads: int, top: int) -> str:
    """cProfile of one run_trial in a fresh process (as a new Ray worker runs its first trial)."""
    from bench.common import cprofile
    from git_ray.config import TrialConfig
    from git_ray.trial import run_trial, torch_threads

    cfg = TrialConfig.model_validate_json(cfg_json)
    with torch_threads(threads):
        return cprofile(lambda: run_trial(cfg, device="cpu"), top=top)


def profile_fresh_trial(spec, top: int = 20) -> str:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, int(spec.resources_per_trial.cpu))
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_profiled_trial, spec.trial_configs()[0].model_dump_json(), threads, top).result()


def run_pool(spec, slots: int, out_root: str) -> tuple[float, dict[str, float]]:
    """The same trials, `slots` at a time, in fresh spawned processes without Ray: the wall time
    a sweep would take on this machine at this concurrency with a scheduler that cost nothing."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, int(spec.resources_per_trial.cpu))
    # Ray gives a worker OMP_NUM_THREADS = its CPU share; give the pool's workers the same.
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        start = time.perf_counter()
        with ProcessPoolExecutor(max_workers=slots, mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_pool_trial, [c.model_dump_json() for c in spec.trial_configs()],
                                 [c.train.threads or threads for c in spec.trial_configs()],
                                 [out_root] * spec.num_trials()))
        wall = time.perf_counter() - start
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return wall, dict(done)


def run_ray(spec, slots: int) -> tuple[float, float, dict, dict[str, float]]:
    """ray.init seconds, run_sweep wall seconds, counts, and per-trial lifecycle seconds."""
    import ray
    from ray import tune

    from git_ray.sweep.runner import run_sweep

    class Lifecycle(tune.Callback):
        """When Ray started and finished each trial, by trial id. Class-level tables: Tune may
        copy the callback object it is given, and the copy is the one it calls."""

        start: dict[str, float] = {}
        end: dict = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start[trial.trial_id] = time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.perf_counter()
            # Tune's results carry Tune's own trial_id; git_ray's id is the config's fingerprint.
            params = {k: v for k, v in trial.config.items() if not k.startswith("__")}
            self.end[f"{trial.trial_id}:git_ray"] = spec.trial_config(params).fingerprint()

    res = spec.resources_per_trial
    start = time.perf_counter()
    # A Ray of our own: address="local" never joins a cluster someone else started on this
    # machine (ray.init() without an address would, and then refuses num_cpus). run_sweep sees
    # Ray initialised and uses it as it is.
    ray.init(address="local", num_cpus=max(1, int(round(slots * res.cpu))), include_dashboard=False,
             logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - start
    life = Lifecycle()
    life.start.clear()
    life.end.clear()
    start = time.perf_counter()
    try:
        counts = run_sweep(spec, extra_callbacks=[life])
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    spans = {life.end[f"{t}:git_ray"]: life.end[t] - life.start[t] for t in life.start if t in life.end}
    started = sorted((t0, life.end[f"{t}:git_ray"]) for t, t0 in life.start.items() if f"{t}:git_ray" in life.end)
    spans["_order"] = [fp for _, fp in started]  # git_ray trial ids in the order Ray started them
    spans["_first_start"] = min(life.start.values(), default=start)
    spans["_last_end"] = max((v for k, v in life.end.items() if ":" not in k), default=start)
    spans["_sweep_start"] = start
    return init_s, wall, counts, spans


def first_trial_extra(order: list[str], inside: dict[str, float], slots: int) -> float:
    """How much longer the first `slots` trials Ray started (one per fresh worker process) took
    inside run_trial than the median of the rest: the new process's imports and first calls.
    nan when there are too few trials to tell."""
    times = [inside[t] for t in order if t in inside]
    if len(times) <= slots:
        return float("nan")
    return statistics.mean(times[:slots]) - statistics.median(times[slots:])


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", default=os.path.join(os.path.dirname(__file__), "..", "sweeps", "quickstart.yaml"))
    ap.add_argument("--trials", type=int, default=6, help="grid points to run (the quickstart has 12 without GIT)")
    ap.add_argument("--slots", type=int, default=2, help="concurrent trials (max_concurrent_trials)")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: the sweep's)")
    ap.add_argument("--git", action="store_true", help="keep GIT grid points (each distinct generator is trained)")
    ap.add_argument("--storage", default=None, help="folder for both runs' results (default: a new one under /tmp)")
    ap.add_argument("--profile", action="store_true",
                    help="also print cProfile's top entries of one trial in a fresh process")
    ap.add_argument("--keep", action="store_true", help="keep the storage folder afterwards")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the bench; print and return its figures."""
    args = parse(argv)
    storage = args.storage or tempfile.mkdtemp(prefix="git_ray_bench_sweep_", dir="/tmp")
    print(f"== sweep: Ray Tune wall time vs ideal, overhead per trial ({machine_line('cpu')})")
    try:
        spec = smaller_sweep(args.sweep, storage, args.trials, args.slots, args.epochs, args.git)
        n = spec.num_trials()
        print(f"   {os.path.basename(args.sweep)}: {n} trials, {args.slots} at a time, "
              f"{spec.resources_per_trial.cpu:g} CPU each, storage {storage}")
        run_s, write_s, _ = run_direct(spec, storage)
        pool_wall, pool_inside = run_pool(spec, args.slots, storage)
        init_s, wall, counts, spans = run_ray(spec, args.slots)
        from git_ray.results import read_tables

        ray_trials = read_tables(spec.root)["trials"]
        inside = dict(zip(ray_trials["trial_id"], ray_trials["train_seconds"]))
        lifecycle_extra = [spans[t] - inside[t] for t in inside if t in spans]
    finally:
        if not args.keep and args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)
    direct_sum = sum(run_s)
    ideal = direct_sum / args.slots
    figs = {
        "trials": float(n),
        "slots": float(args.slots),
        "finished": float(counts["finished"]),
        "direct_trial_s_mean": statistics.mean(run_s),
        "direct_write_s_mean": statistics.mean(write_s),
        "ideal_s": ideal,
        "sweep_wall_s": wall,
        "wall_over_ideal": wall / ideal,
        "overhead_per_trial_s": (wall * args.slots - direct_sum) / n,
        "pool_wall_s": pool_wall,
        "ray_over_pool": wall / pool_wall,
        "ray_overhead_per_trial_s": (wall - pool_wall) * args.slots / n,
        "pool_trial_s_mean": statistics.mean(pool_inside.values()),
        "in_ray_trial_s_mean": statistics.mean(inside.values()) if inside else float("nan"),
        "contention_ratio": statistics.mean(pool_inside.values()) / statistics.mean(run_s),
        "lifecycle_outside_run_trial_s_mean": statistics.mean(lifecycle_extra) if lifecycle_extra else float("nan"),
        "driver_fixed_s": (spans["_first_start"] - spans["_sweep_start"]) + (spans["_sweep_start"] + wall - spans["_last_end"]),
        # The same ratio against the trials' own times inside this sweep (contention and each
        # worker's first-trial warm-up included): what is left is Ray's and the driver's.
        "in_sweep_ideal_s": sum(inside.values()) / args.slots,
        "wall_over_in_sweep_ideal": wall / (sum(inside.values()) / args.slots) if inside else float("nan"),
        "first_trial_extra_s": first_trial_extra(spans["_order"], inside, args.slots),
        "ray_init_s": init_s,
    }
    print_figures("figures (seconds unless a ratio)", figs)
    if args.profile:
        print("  profile: one trial's run_trial in a fresh process (cProfile, top entries by cumulative time)")
        print(profile_fresh_trial(spec))
    return figs


if __name__ == "__main__":
    main()
