"""`git-ray status RESULTS`: where a running or finished sweep stands. No Ray imported.

Counts come from storage, judged against the `sweep.yaml` the driver stored beside the results:
done (a trials row), failed (a failed row and no trials row), stopped (early-stopped by a
scheduler: known from the driver's heartbeat only, since a stopped trial writes no rows) and
missing (the rest). A grid's or a random search's trials are known in advance (the driver's own
`SweepSpec.planned_points`), so they are counted by group; an Optuna search's are drawn as it
runs, so only its totals are known. The running trials come from the
driver's heartbeat `_status.json` while it is fresh (the driver rewrites it every few seconds);
a stale one means the driver is gone, and storage alone is shown.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import yaml

from git_ray import storage
from git_ray.config import ConfigError
from git_ray.sweep.console import fmt_duration, table, value_text
from git_ray.sweep.spec import SweepSpec

DEFAULT_GROUP = ("dataset.source", "dataset.nuisance")
STATUS_FILE = "_status.json"  # the driver's heartbeat; '_' keeps it out of the Parquet listings
HEARTBEAT_EVERY_S = 5.0
STALE_AFTER_BEATS = 6  # a heartbeat older than this many intervals: the driver is gone


def is_fresh(beat: dict[str, Any], now: float) -> bool:
    """Whether the heartbeat comes from a driver that is still running."""
    every = float(beat.get("heartbeat_every_s") or HEARTBEAT_EVERY_S)
    return beat.get("state") == "running" and now - float(beat.get("updated_at", 0)) <= STALE_AFTER_BEATS * every


def load_stored_spec(root: str) -> SweepSpec:
    path = storage.join(root, "sweep.yaml")
    if not storage.exists(root):
        raise ConfigError(f"{root}: no such folder; pass the results folder of one sweep (<storage>/<name>)")
    if not storage.exists(path):
        raise ConfigError(f"{root}: no sweep.yaml here; pass the results folder of one sweep "
                          "(<storage>/<name>, where `git-ray sweep` wrote sweep.yaml)")
    try:
        return SweepSpec.model_validate(yaml.safe_load(storage.read_bytes(path)))
    except Exception as err:  # noqa: BLE001 - any damage to the file reads as one message
        raise ConfigError(f"{path}: not a sweep file this git_ray can read ({type(err).__name__}); "
                          "was it written by another version?") from None


def read_heartbeat(root: str) -> dict[str, Any] | None:
    path = storage.join(root, STATUS_FILE)
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return None


def _group_value(cfg_flat: dict[str, Any], params: dict[str, Any], key: str) -> str:
    if key in params:
        return value_text(params[key])
    return value_text(cfg_flat.get(key))


def sweep_status(root: str, *, by: str | None = None, now: float | None = None) -> str:
    """The status report of the sweep stored at `root` as text."""
    from git_ray.config import flatten
    from git_ray.results import finished_trial_ids, read_table

    spec = load_stored_spec(root)
    now = time.time() if now is None else now
    done_ids = finished_trial_ids(root)
    failed = read_table(root, "failed")
    failed_ids = set(failed["trial_id"]) - done_ids if len(failed) else set()
    beat = read_heartbeat(root)
    fresh = beat is not None and is_fresh(beat, now)
    running_ids = {r.get("trial_id") for r in beat.get("running", [])} if fresh else set()
    stopped = int(beat.get("counts", {}).get("stopped", 0)) if beat else 0

    lines = [f"sweep {spec.name!r} at {root}: {spec.num_trials()} trial(s)"]
    keys = [by] if by else list(DEFAULT_GROUP)
    planned = spec.planned_points()  # the driver's own plan; None for an Optuna search
    if planned is not None:
        groups: dict[tuple, dict[str, int]] = defaultdict(lambda: dict(done=0, failed=0, running=0, missing=0))
        for p in planned:
            cfg = spec.trial_config(p)
            flat = flatten(cfg.model_dump())
            g = groups[tuple(_group_value(flat, p, k) for k in keys)]
            tid = cfg.fingerprint()
            state = ("done" if tid in done_ids else "failed" if tid in failed_ids
                     else "running" if tid in running_ids else "missing")
            g[state] += 1
        if by and all(k == ("None",) for k in groups):
            raise ConfigError(f"--by {by!r} is not a config key of this sweep; use a dotted key such as "
                              f"balance.loss or one of the grid's axes: {', '.join(spec.grid) or '(none)'}")
        rows = [[*k, v["done"], v["running"], v["failed"], v["missing"]] for k, v in sorted(groups.items())]
        total = {s: sum(v[s] for v in groups.values()) for s in ("done", "running", "failed", "missing")}
        lines += [""] + table([*keys, "done", "running", "failed", "missing"],
                              rows + [["total", *[""] * (len(keys) - 1), *total.values()]])
        lines.append(f"\ndone {total['done']}, stopped {stopped}, failed {total['failed']}, "
                     f"missing {total['missing']} (running {total['running']} of those)")
    else:
        n_done, n_failed = len(done_ids), len(failed_ids)
        missing = max(0, spec.num_trials() - n_done - n_failed - stopped)
        lines.append(f"search (optuna): done {n_done}, stopped {stopped}, failed {n_failed}, "
                     f"missing {missing} (trials are drawn while it runs, so they are not grouped)")

    if beat is None:
        lines.append("driver: no heartbeat (_status.json); counts are from storage alone")
    elif not fresh:
        state = beat.get("state", "running")
        age = fmt_duration(now - float(beat.get("updated_at", 0)))
        lines.append(f"driver: {'finished' if state == 'finished' else 'not running'} "
                     f"(last heartbeat {age} ago); counts are from storage")
    else:
        running = beat.get("running", [])
        eta = beat.get("eta_s")
        age = fmt_duration(now - float(beat["updated_at"]))
        if beat.get("phase") == "generators":
            lines.append(f"driver: running (heartbeat {age} ago), phase 0: training the GIT generators "
                         "before the trials")
        else:
            lines.append(f"driver: running (heartbeat {age} ago), {len(running)} active trial(s), "
                         f"ETA {fmt_duration(eta)}")
        axes = list(spec.grid) + (list(spec.search.space) if spec.search else [])
        rows = [[r.get("trial_id") or "?", fmt_duration(now - float(r["started_at"])),
                 ", ".join(f"{k}={value_text(r.get('params', {}).get(k))}" for k in axes)]
                for r in running]
        if rows:
            lines += [""] + table(["trial_id", "running for", "params"], rows)
    return "\n".join(lines)
