"""Which trials of a results folder are complete: the Parquet files are the record of a sweep.

A trial is complete when its trials, per_class and epochs files are all there and all readable
with pyarrow. The sweep driver reconciles its planned trial list against this set (on a fresh
run, a re-run and `--resume` alike) and runs exactly the trials that are not in it, whatever
Ray Tune's own saved state says; its exit status comes from the same set after the run.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from git_ray.results.store import _files, read_trial, resolve

TRIAL_TABLES = ("trials", "per_class", "epochs")
_READERS = 8  # parallel readers: on S3 each check is a round trip, locally this costs nothing


def _readable(fs: pafs.FileSystem, path: str) -> str | None:
    """The file's `status` column's first value ("" if it has none) if the Parquet file reads
    whole with at least one row (a trial's files always have), else None."""
    try:
        table = pq.read_table(path, filesystem=fs)
    except Exception:  # truncated, not Parquet, vanished while listed: all mean "not complete"
        return None
    if table.num_rows == 0:
        return None
    return str(table.column("status")[0]) if "status" in table.column_names else ""


def trial_files(root: str) -> dict[str, dict[str, str]]:
    """{trial_id: {table: path}} for every trial file under the three trial tables (listing only)."""
    fs, base = resolve(root)
    found: dict[str, dict[str, str]] = {}
    for table in TRIAL_TABLES:
        for info in _files(fs, f"{base}/{table}"):
            found.setdefault(info.base_name[: -len(".parquet")], {})[table] = info.path
    return found


def complete_trial_status(root: str) -> dict[str, str]:
    """{trial_id: status} ("ok", "stopped") of the trials whose trials, per_class and epochs
    files are all present and readable."""
    fs, _ = resolve(root)
    candidates = {tid: paths for tid, paths in trial_files(root).items() if len(paths) == len(TRIAL_TABLES)}
    checks = [(tid, table, p) for tid, paths in candidates.items() for table, p in paths.items()]
    with ThreadPoolExecutor(_READERS) as pool:
        read = list(pool.map(lambda c: _readable(fs, c[2]), checks))
    bad = {tid for (tid, _, _), got in zip(checks, read) if got is None}
    return {tid: got for (tid, table, _), got in zip(checks, read) if table == "trials" and tid not in bad}


def complete_trial_ids(root: str) -> set[str]:
    """Ids of the trials whose trials, per_class and epochs files are all present and readable."""
    return set(complete_trial_status(root))


def read_complete_trial(root: str, trial_id: str) -> dict[str, Any] | None:
    """A trial's stored rows (as `read_trial` returns them) if all three of its files read,
    else None: a damaged or partial record counts as no record, so the trial runs again."""
    try:
        stored = read_trial(root, trial_id)
    except Exception:  # an unreadable trials file
        return None
    if stored is None or not stored["per_class"] or not stored["epochs"]:
        return None
    return stored
