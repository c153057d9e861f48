"""Find and read results folders for analysis: one or several sweeps, local or remote, finished
or still running, written by this or an older schema version.

`load(paths)` returns the four results tables as DataFrames with a `sweep` column (the folder's
name). A path may be a sweep's folder (it holds trials/, per_class/, epochs/) or a folder of
sweeps (each child that holds them is one sweep).
"""
from __future__ import annotations

import urllib.parse
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from git_ray.config import ConfigError
from git_ray.results import SCHEMAS, TABLES, dataset, empty_frame, resolve
from git_ray.results.schema import PARTITION_COLUMNS, file_schema

EXPECTED = "trials/, per_class/ and epochs/, as `git-ray sweep` and `git-ray train --out` write them"


class MixedSchemaWarning(UserWarning):
    """Some results files were written with another schema; their missing columns read as NaN."""


class UnreadableFileWarning(UserWarning):
    """A results file cannot be read (truncated); it was skipped."""


def _warn_unreadable(sweep: Sweep, path: str, err: Exception) -> None:
    warnings.warn(f"{path}: cannot be read ({type(err).__name__}: {err}); skipped it. "
                  f"`git-ray verify {sweep.root} --repair` moves it aside, and the sweep's next run "
                  "redoes its trial", UnreadableFileWarning, stacklevel=4)


def _without_unreadable(sweep: Sweep, name: str, d):
    """The dataset minus the files whose footer cannot be read (each named in a warning).
    Reading the footers is what `_check_schemas` does next anyway (pyarrow keeps them)."""
    bad = []
    for frag in d.get_fragments():
        try:
            frag.physical_schema
        except (pa.ArrowInvalid, OSError) as err:
            _warn_unreadable(sweep, frag.path, err)
            bad.append(frag.path)
    return dataset(sweep.root, name, exclude=bad) if bad else d


@dataclass(frozen=True)
class Sweep:
    """One results folder: its display name and its location (a local path or a URI)."""

    name: str
    root: str


def _is_results_folder(fs: pafs.FileSystem, path: str) -> bool:
    return any(fs.get_file_info(f"{path}/{t}").type == pafs.FileType.Directory for t in TABLES)


def find_sweeps(paths: str | Sequence[str]) -> list[Sweep]:
    """The sweeps under the given paths; ConfigError for a path that holds none."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError("no results folder given; pass the folder a sweep wrote (it holds " + EXPECTED + ")")
    sweeps: list[Sweep] = []
    for p in paths:
        p = str(p).rstrip("/") or "/"
        fs, base = resolve(p)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{p}: no such folder; pass the results folder of a sweep (it holds {EXPECTED})")
        if info.type != pafs.FileType.Directory:
            raise ConfigError(f"{p}: not a folder; pass the results folder of a sweep (it holds {EXPECTED})")
        if _is_results_folder(fs, base):
            sweeps.append(Sweep(_name(p), p))
            continue
        children = [c for c in fs.get_file_info(pafs.FileSelector(base))
                    if c.type == pafs.FileType.Directory and not c.base_name.startswith((".", "_"))]
        found = [Sweep(c.base_name, f"{p}/{c.base_name}") for c in sorted(children, key=lambda c: c.base_name)
                 if _is_results_folder(fs, c.path)]
        if not found:
            raise ConfigError(f"{p}: no results here: expected {EXPECTED} in this folder "
                              "or in its sub-folders (one per sweep); has the sweep finished any trial?")
        sweeps.extend(found)
    names = [s.name for s in sweeps]
    if len(set(names)) < len(names):  # two sweeps of the same name in different places
        sweeps = [Sweep(s.root.rstrip("/"), s.root) for s in sweeps]
    return sweeps


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] or path


def _check_schemas(sweep: Sweep, name: str, d) -> None:
    """Warn once per table when files lack columns of the current schema (an older writer)."""
    want = set(file_schema(name).names)
    lacking: dict[str, int] = {}
    for frag in d.get_fragments():
        for col in want - set(frag.physical_schema.names):
            lacking[col] = lacking.get(col, 0) + 1
    if lacking:
        cols = ", ".join(f"{c} ({n} file{'s' * (n > 1)})" for c, n in sorted(lacking.items()))
        warnings.warn(f"{sweep.root}/{name}: some files lack columns of the current schema: {cols}; "
                      "they were probably written by an older git_ray and read as missing values",
                      MixedSchemaWarning, stacklevel=3)


def _read_file_by_file(sweep: Sweep, name: str, d, err: Exception) -> pd.DataFrame:
    """Slow path when the files cannot be read as one dataset (a column changed type): read each
    file, cast what can be cast to the current schema, skip (with a warning) what cannot."""
    schema = SCHEMAS[name]
    frames, skipped = [], []
    for frag in d.get_fragments():
        try:
            t = pq.read_table(frag.path, filesystem=d.filesystem)
        except (pa.ArrowInvalid, OSError) as read_err:  # damaged past its footer
            _warn_unreadable(sweep, frag.path, read_err)
            continue
        parts = {k: urllib.parse.unquote(v) for k, v in (p.split("=", 1) for p in frag.path.split("/") if "=" in p)}
        cols = []
        try:
            for f in schema:
                if f.name in PARTITION_COLUMNS:
                    cols.append(pa.array([parts.get(f.name)] * len(t), pa.string()))
                elif f.name in t.column_names:
                    cols.append(t.column(f.name).cast(f.type))
                else:
                    cols.append(pa.nulls(len(t), f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            skipped.append(frag.path)
            continue
        frames.append(pa.Table.from_arrays(cols, schema=schema.with_metadata(None)).to_pandas())
    warnings.warn(f"{sweep.root}/{name}: files disagree on column types ({err}); read them one by one"
                  + (f" and skipped {len(skipped)} that cannot be converted: {skipped[:3]}" if skipped else ""),
                  MixedSchemaWarning, stacklevel=3)
    return pd.concat(frames, ignore_index=True) if frames else empty_frame(name)


def read_sweep(sweep: Sweep, tables: Iterable[str] = TABLES) -> dict[str, pd.DataFrame]:
    """The tables of one sweep, tolerant of older files; rows of unfinished trials dropped."""
    out: dict[str, pd.DataFrame] = {}
    for name in tables:
        d = dataset(sweep.root, name)
        if d is None:
            out[name] = empty_frame(name)
            continue
        d = _without_unreadable(sweep, name, d)
        if d is None:
            out[name] = empty_frame(name)
            continue
        _check_schemas(sweep, name, d)
        try:
            out[name] = d.to_table().to_pandas()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            out[name] = _read_file_by_file(sweep, name, d, err)
    if "trials" in out:
        # A trial is finished once its trials row exists (written last); per_class or epochs rows
        # without one belong to a write in progress.
        done = set(out["trials"]["trial_id"])
        for name in ("per_class", "epochs"):
            if name in out:
                out[name] = out[name][out[name]["trial_id"].isin(done)].reset_index(drop=True)
        if "failed" in out:  # a failure later retried successfully is not a failure
            out["failed"] = out["failed"][~out["failed"]["trial_id"].isin(done)].reset_index(drop=True)
    for frame in out.values():
        frame.insert(0, "sweep", sweep.name)
    return out


def load(path_or_paths: str | Sequence[str], tables: Iterable[str] = TABLES) -> dict[str, pd.DataFrame]:
    """Every sweep's tables under the given paths, concatenated, with a `sweep` column.

    Raises ConfigError when a path holds no results. Reads what has finished so far on a running
    sweep (writes in progress are staged in `_staging/`, outside the tables). A file that cannot
    be read is skipped with an UnreadableFileWarning naming it and `git-ray verify DIR --repair`.
    """
    tables = tuple(tables)
    sweeps = find_sweeps(path_or_paths)
    parts = [read_sweep(s, tables) for s in sweeps]
    out = {name: _concat([p[name] for p in parts]) for name in tables}
    if "trials" in out and out["trials"].empty:
        where = ", ".join(s.root for s in sweeps)
        failed = out.get("failed")
        why = (f"; {len(failed)} trial(s) failed (see failed/), e.g. {failed['error'].iloc[0]!r}"
               if failed is not None and len(failed) else "")
        raise ConfigError(f"{where}: no finished trials: expected Parquet files in {EXPECTED}{why}")
    return out


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return frames[0]
    return pd.concat(non_empty, ignore_index=True)
