"""`git-ray sweep FILE --dry-run`: what a sweep would run, without starting Ray or any trial.

It lists the expanded trials (their git_ray trial_id and the keys that vary), how many already
have results in storage, the distinct GIT generators (and whether each is cached), and an
estimate of the time left from measured figures: the mean `train_seconds` of the trials this
sweep already finished, spread over the trial slots that run at once. Nothing here imports Ray.
"""
from __future__ import annotations

import os

from git_ray import storage
from git_ray.sweep.console import fmt_duration, table, value_text
from git_ray.sweep.spec import SweepSpec

MAX_ROWS = 40  # the table shows this many trials; the counts always cover all of them


def _slots(spec: SweepSpec, num_cpus: int | None) -> int:
    """Trials running at once on a local Ray: the concurrency cap, else the CPUs they fit."""
    per_trial = spec.resources_per_trial.cpu
    fit = max(1, int((num_cpus or os.cpu_count() or 1) // per_trial))
    return min(fit, spec.max_concurrent_trials) if spec.max_concurrent_trials else fit


def dry_run(spec: SweepSpec, *, num_cpus: int | None = None) -> str:
    """The dry-run report as text."""
    from git_ray.data.dataset import dataset_fingerprint
    from git_ray.generative.cache import generator_fingerprint, generator_paths
    from git_ray.results import finished_trial_ids, read_table
    from git_ray.sweep.runner import distinct_generators, generator_groups
    from git_ray.trial import default_generator_cache

    lines = [f"sweep {spec.name!r}: {spec.num_trials()} trial(s); results in {spec.root}"]
    planned = spec.planned_points()  # the driver's own plan (None: an Optuna search)
    points = planned if planned is not None else spec.grid_points()
    axes = list(spec.grid) + (list(spec.search.space) if planned is not None and spec.search else [])
    ids = [spec.trial_config(p).fingerprint() for p in points]
    stored = finished_trial_ids(spec.root) if storage.exists(spec.root) else set()
    if spec.search:
        drawn = ("drawn by its study while it runs" if planned is None
                 else f"drawn now from search.seed {spec.search.seed}, as the driver draws them")
        lines.append(f"search: {spec.search.algorithm}, {spec.search.num_samples} sample(s) per grid point over "
                     + ", ".join(f"{k} {v}" for k, v in spec.search.space.items()) + f"; its trials are {drawn}")
    have = len(stored) if planned is None else len(stored & set(ids))
    rows = [[tid, *(value_text(p[a]) for a in axes), "yes" if tid in stored else ""]
            for tid, p in zip(ids, points)] if planned is not None else []
    if axes and rows:
        lines.append("")
        lines += table(["trial_id", *axes, "stored"], rows[:MAX_ROWS])
        if len(rows) > MAX_ROWS:
            lines.append(f"... and {len(rows) - MAX_ROWS} more")
    todo = max(0, spec.num_trials() - have)
    lines += ["", f"already in storage: {have} of {spec.num_trials()}; to run: {todo}"]

    gens = distinct_generators(spec)
    if gens:
        groups = generator_groups(spec, gens)
        fused = f" (phase 0 trains them fused: {len(groups)} task(s) of up to {spec.fuse_size})" \
            if len(groups) < len(gens) else ""
        lines.append(f"GIT generators: {len(gens)} distinct{fused}")
        for cfg in gens:
            cache = cfg.generator.cache or default_generator_cache(spec.storage)
            fp = generator_fingerprint(dataset_fingerprint(cfg.dataset), cfg.generator)
            cached = storage.exists(generator_paths(cache, fp)["checkpoint"])
            lines.append(f"  {fp}  {cfg.dataset.source}/{cfg.dataset.nuisance} ratio "
                         f"{cfg.dataset.imbalance_ratio:g}, {cfg.generator.steps} steps: "
                         f"{'cached' if cached else 'to train'} ({cache})")
    elif spec.search and any(c.augment.git for c in [spec.trial_config(p) for p in points]):
        lines.append("GIT generators: chosen by the search; each is trained once under a sweep-wide lock")
    else:
        lines.append("GIT generators: none")

    slots = _slots(spec, num_cpus)
    trials = read_table(spec.root, "trials") if stored else None
    if trials is not None and len(trials) and todo:
        mean = float(trials["train_seconds"].mean())
        lines.append(f"estimate: {todo} trial(s) x {mean:.1f} s (mean train_seconds of {len(trials)} "
                     f"stored trial(s)) / {slots} at once = about {fmt_duration(todo * mean / slots)}, "
                     "plus Ray's start-up and any generator training")
    elif todo:
        lines.append(f"estimate: no measured trials of this sweep yet; {slots} trial(s) would run at once")
    lines.append("dry run: nothing was started or written")
    return "\n".join(lines)
