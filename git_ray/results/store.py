"""The one Parquet writer and reader for git_ray results, on local folders and URIs (s3://...).

Layout under a results root (a sweep's folder, or `git-ray train --out`):

    <root>/<table>/dataset_source=<s>/dataset_nuisance=<n>/<trial_id>.parquet

one file per trial per table, so a retried or resumed trial overwrites its own files and never
duplicates rows. A trial's files appear together or not at all, and no reader ever sees half a file:
- local: every table is written (fsynced) to `<root>/_staging/`, outside the table folders, so
  neither pyarrow, pandas, DuckDB nor polars globs (`trials/**/*.parquet`) can see it; then each is
  `os.replace`d into place, trials last (a trials row means its per_class and epochs rows are there).
  Staging files left by a killed writer are removed by the next write in another process once
  they are STALE_STAGING_S old.
- remote: each object is written once under its final name (one S3 PUT is atomic), trials last.
Rows are validated against `git_ray.results.schema` before anything is written; every storage
operation retries transient failures (see `git_ray.storage`).

A trial counts as done only when its trials, per_class and epochs files are all there and
readable (`complete_trial_ids`, `trial_files_readable`, `read_trial`): a truncated file makes
the trial missing, so the sweep runs it again and its new files replace the bad ones.

A URI's filesystem comes from `pyarrow.fs.FileSystem.from_uri`; for S3 the endpoint can be set
with the `AWS_ENDPOINT_URL` environment variable (or `?endpoint_override=` in the URI).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
import uuid
import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import git_ray
from git_ray import storage
from git_ray.config import TrialConfig
from git_ray.results.record import TrialResult
from git_ray.results.schema import (
    PARTITION_COLUMNS, PARTITION_SCHEMA, SCHEMAS, TABLES, UNIQUE_KEYS, WRITER_COLUMNS, file_schema,
)

# Tables of a finished trial, in write order: trials last, so its row marks the trial complete.
_WRITE_ORDER = ("per_class", "epochs", "trials")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


class SchemaError(ValueError):
    """Rows that do not match the results schema (a bug in the code producing them)."""


# ---------------------------------------------------------------------------------------------
# Filesystems and paths


def resolve(root: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, base path) for a local folder or a URI such as s3://bucket/prefix."""
    fs, path = storage.resolve(os.fspath(root))
    return fs, path.rstrip("/") or "/"


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _partition_dir(base: str, table: str, source: str, nuisance: str) -> str:
    # Partition values are URI-encoded, which is what pyarrow's hive partitioning decodes.
    q = lambda v: urllib.parse.quote(str(v), safe="")  # noqa: E731
    return f"{base}/{table}/dataset_source={q(source)}/dataset_nuisance={q(nuisance)}"


def trial_file(root: str, table: str, source: str, nuisance: str, trial_id: str) -> str:
    """Where one trial's rows of one table live (a path on `resolve(root)`'s filesystem)."""
    _check_trial_id(trial_id)
    return f"{_partition_dir(resolve(root)[1], table, source, nuisance)}/{trial_id}.parquet"


def _check_trial_id(trial_id: Any) -> None:
    if not isinstance(trial_id, str) or not _SAFE_ID.match(trial_id):
        raise SchemaError(
            f"trial_id {trial_id!r} cannot name a file: use letters, digits and _ . = + - only, "
            "starting with a letter or digit")


# ---------------------------------------------------------------------------------------------
# Validation


def _type_ok(typ: pa.DataType, v: Any) -> bool:
    is_bool = isinstance(v, (bool, np.bool_))
    if pa.types.is_boolean(typ):
        return is_bool
    if pa.types.is_integer(typ):
        return isinstance(v, (int, np.integer)) and not is_bool
    if pa.types.is_floating(typ):
        return isinstance(v, (int, float, np.integer, np.floating)) and not is_bool
    if pa.types.is_string(typ):
        return isinstance(v, str)
    if pa.types.is_timestamp(typ):
        return isinstance(v, dt.datetime)
    raise TypeError(f"no check for arrow type {typ}")  # pragma: no cover - schema uses the above


def _rows_to_table(table: str, rows: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any]) -> pa.Table:
    """Check every row's columns and value types, then build the table (partition columns kept)."""
    schema = SCHEMAS[table]
    names = set(schema.names)
    clean: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(f"{table} row {i}: expected a dict, got {type(row).__name__}")
        row = {**{k: v for k, v in defaults.items() if k in WRITER_COLUMNS[table]}, **row}
        missing, extra = sorted(names - row.keys()), sorted(row.keys() - names)
        if missing or extra:
            raise SchemaError(
                f"{table} row {i} does not match the results schema: "
                f"missing columns {missing}, unexpected columns {extra}; nothing was written")
        for f in schema:
            v = row[f.name]
            if v is None:
                if not f.nullable:
                    raise SchemaError(f"{table} row {i}: column {f.name!r} must not be null")
            elif not _type_ok(f.type, v):
                raise SchemaError(
                    f"{table} row {i}: column {f.name!r} expects {f.type}, got {type(v).__name__} "
                    f"{v!r} (convert tensors with .item())")
        clean.append(row)
    out = pa.Table.from_pylist(clean, schema=schema)
    keys = UNIQUE_KEYS[table]
    if len(clean) and pd.DataFrame({k: out.column(k).to_pylist() for k in keys}).duplicated().any():
        raise SchemaError(f"{table}: duplicate rows for {list(keys)}")
    return out


def _validate(trial_id: str, tables: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[tuple[str, str], dict[str, pa.Table]]:
    """Validate a trial's tables; return its partition (source, nuisance) and the file bodies."""
    _check_trial_id(trial_id)
    defaults = {
        "status": "ok", "git_ray_version": git_ray.__version__,
        "schema_version": git_ray.SCHEMA_VERSION,
        "finished_at": dt.datetime.now(dt.timezone.utc), "failed_at": dt.datetime.now(dt.timezone.utc),
    }
    built = {name: _rows_to_table(name, rows, defaults) for name, rows in tables.items()}
    partition: tuple[str, str] | None = None
    for name, t in built.items():
        ids = set(t.column("trial_id").to_pylist())
        if ids - {trial_id}:
            raise SchemaError(f"{name}: rows carry trial_id {sorted(ids - {trial_id})}, expected {trial_id!r}")
        parts = set(zip(*(t.column(c).to_pylist() for c in PARTITION_COLUMNS)))
        if partition is not None:
            parts.add(partition)
        if len(parts) > 1:
            raise SchemaError(f"trial {trial_id}: rows disagree on {PARTITION_COLUMNS}: {sorted(parts)}")
        partition = next(iter(parts), partition)
    if partition is None:
        raise SchemaError(f"trial {trial_id}: no rows to write")
    bodies = {name: t.select(file_schema(name).names).cast(file_schema(name)) for name, t in built.items()}
    return partition, bodies


# ---------------------------------------------------------------------------------------------
# Writing

# A staging file untouched this long belongs to no live writer (a write renames its files
# within milliseconds of finishing them); the next process that writes removes it.
STALE_STAGING_S = 15 * 60
_cleaned: set[str] = set()  # roots whose staging this process has already swept


def staging_dir(base: str) -> str:
    """Where local writes under the results root `base` are staged before their rename."""
    return f"{base}/{storage.STAGING}"


def clean_staging(root: str, older_than_s: float = STALE_STAGING_S) -> list[str]:
    """Remove stale leftovers of killed writes from `<root>/_staging/` (local roots only);
    returns the removed paths. Safe while other trials write (see STALE_STAGING_S)."""
    fs, base = resolve(root)
    if not _is_local(fs):
        return []
    return storage.clean_staging(staging_dir(base), older_than_s)


def _parquet_bytes(table: pa.Table) -> bytes:
    # Serialised in memory first (results files are small): the bytes can then be staged with a
    # real errno on a full disk, and re-sent whole when a remote PUT is retried.
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_parquet(data: bytes, path: str, fs: pafs.FileSystem) -> None:
    """One whole file: local paths get a plain fsynced write (the caller stages and renames),
    remote ones a single PUT."""
    if _is_local(fs):
        storage.write_local_file(path, data)
        return

    def put() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    storage.call("write", path, put)


def _delete(fs: pafs.FileSystem, path: str) -> None:
    def rm() -> None:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    storage.call("delete", path, rm)


def _write_files(fs: pafs.FileSystem, base: str, files: list[tuple[str, pa.Table]], trial_id: str) -> None:
    """Write (final path, table) pairs in order so that they appear together or not at all."""
    bodies = [(final, _parquet_bytes(table)) for final, table in files]
    if _is_local(fs):
        stage = staging_dir(base)
        if base not in _cleaned:
            _cleaned.add(base)
            clean_staging(base)
        storage.call("create folder", stage, lambda: os.makedirs(stage, exist_ok=True))
        tmps: list[str] = []
        placed: list[str] = []
        try:
            for final, data in bodies:
                table = final[len(base):].strip("/").split("/", 1)[0]
                tmps.append(f"{stage}/{trial_id}.{table}.{uuid.uuid4().hex[:12]}.part")
                storage.call("write", final, lambda t=tmps[-1], d=data: _write_parquet(d, t, fs))
            for tmp, (final, _) in zip(tmps, bodies):
                folder = os.path.dirname(final)
                storage.call("create folder", folder, lambda f=folder: os.makedirs(f, exist_ok=True))
                storage.call("rename", final, lambda t=tmp, f=final: os.replace(t, f))
                placed.append(final)
        except BaseException:
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.remove(tmp)
            if len(placed) < len(bodies):  # the last (marking) file is missing: no orphans
                for final in placed:
                    _delete(fs, final)
            raise
        return
    written: list[str] = []
    try:
        for final, data in bodies:
            _write_parquet(data, final, fs)
            written.append(final)
    except BaseException:
        if len(written) < len(bodies):
            for final in written:
                try:
                    _delete(fs, final)
                except OSError:  # the storage is down: the orphans are reported by `git-ray verify`
                    pass
        raise


def write_trial(root: str, result: TrialResult) -> None:
    """Write one finished trial's rows (trials, per_class, epochs) under `root`, atomically.

    Overwrites the trial's earlier files (a retry or resume), and removes its `failed/` record.
    Raises SchemaError, having written nothing, when a row does not match the schema;
    StorageFullError on a full disk, StorageUnavailableError when remote storage stays down for
    the retry budget, having left no partial file either way.
    """
    if not isinstance(result, TrialResult):
        raise SchemaError(f"write_trial needs a TrialResult, got {type(result).__name__}")
    rows = {"per_class": result.per_class, "epochs": result.epochs, "trials": [result.trial]}
    (source, nuisance), bodies = _validate(result.trial_id, rows)
    fs, base = resolve(root)
    files = [(f"{_partition_dir(base, n, source, nuisance)}/{result.trial_id}.parquet", bodies[n])
             for n in _WRITE_ORDER]
    _write_files(fs, base, files, result.trial_id)
    _delete(fs, f"{_partition_dir(base, 'failed', source, nuisance)}/{result.trial_id}.parquet")


def write_failure(root: str, trial_id: str, config: TrialConfig, error: str, attempts: int) -> None:
    """Record a trial that failed after all its retries (one row in `failed/`)."""
    row = {"trial_id": trial_id, **config.flat(), "error": str(error), "attempts": int(attempts)}
    (source, nuisance), bodies = _validate(trial_id, {"failed": [row]})
    fs, base = resolve(root)
    final = f"{_partition_dir(base, 'failed', source, nuisance)}/{trial_id}.parquet"
    _write_files(fs, base, [(final, bodies["failed"])], trial_id)


# ---------------------------------------------------------------------------------------------
# Reading


def _files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    sel = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    infos = storage.call("list", folder, lambda: fs.get_file_info(sel))
    return [f for f in infos
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))]


def dataset(root: str, name: str, exclude: Iterable[str] = ()) -> ds.Dataset | None:
    """The pyarrow dataset of one table with the canonical schema and pinned partitioning,
    or None when the table has no files yet. `exclude`: file paths to leave out (unreadable ones)."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown results table {name!r}; choose one of: {', '.join(TABLES)}")
    fs, base = resolve(root)
    folder = f"{base}/{name}"
    skip = set(exclude)
    paths = [f.path for f in _files(fs, folder) if f.path not in skip]
    if not paths:
        return None
    return ds.dataset(paths, schema=SCHEMAS[name], format="parquet", filesystem=fs,
                      partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
                      partition_base_dir=folder)


def unreadable_files(root: str, name: str) -> dict[str, str]:
    """{path: error} for the files of one table whose Parquet footer cannot be read (truncated
    or not Parquet at all). Reads every footer: for the slow path, once a read has failed."""
    fs, base = resolve(root)
    bad: dict[str, str] = {}
    for f in _files(fs, f"{base}/{name}"):
        err = _footer_error(fs, f.path)
        if err is not None:
            bad[f.path] = err
    return bad


def empty_frame(name: str) -> pd.DataFrame:
    """A DataFrame with no rows and the table's columns and dtypes."""
    return SCHEMAS[name].empty_table().to_pandas()


def read_table(root: str, name: str) -> pd.DataFrame:
    """One results table as a DataFrame (partition columns as plain strings); empty if absent.

    Files written by an older schema read their newer (nullable) columns as null.
    """
    d = dataset(root, name)
    if d is None:
        return empty_frame(name)
    return storage.call("read", f"{root}/{name}", lambda: d.to_table()).to_pandas()


def read_tables(root: str, tables: Iterable[str] = TABLES) -> dict[str, pd.DataFrame]:
    """The named results tables under `root` (local folder or URI) as DataFrames."""
    return {name: read_table(root, name) for name in tables}


_DONE_TABLES = ("trials", "per_class", "epochs")


def _footer_error(fs: pafs.FileSystem, path: str, rows: int | None = None) -> str | None:
    """None if the Parquet file at `path` is readable (its footer parses and, when `rows` is
    given, it holds that many rows); else why not. A truncated file has no footer."""
    try:
        meta = storage.call("read", path, lambda: pq.read_metadata(path, filesystem=fs))
    except (pa.ArrowInvalid, OSError) as err:
        if isinstance(err, (storage.StorageUnavailableError, storage.StorageAccessError)):
            raise  # the storage is down or wrong, not the file
        return f"{type(err).__name__}: {err}"
    if rows is not None and meta.num_rows != rows:
        return f"holds {meta.num_rows} rows, expected {rows}"
    return None


def _trial_paths(fs: pafs.FileSystem, base: str) -> dict[str, dict[str, str]]:
    """{trial_id: {table: path}} for the trials, per_class and epochs files under `base`."""
    out: dict[str, dict[str, str]] = {}
    for table in _DONE_TABLES:
        for f in _files(fs, f"{base}/{table}"):
            out.setdefault(f.base_name[: -len(".parquet")], {})[table] = f.path
    return out


def _complete(fs: pafs.FileSystem, paths: Mapping[str, str]) -> bool:
    return set(paths) == set(_DONE_TABLES) and all(
        _footer_error(fs, p, rows=1 if t == "trials" else None) is None for t, p in paths.items())


def _each(fs: pafs.FileSystem, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """`fn` over `items`: in turn on a local disk, 16 at a time on remote storage, where each
    call is a round trip rather than CPU work."""
    if _is_local(fs):
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(fn, items))


def _complete_paths(fs: pafs.FileSystem, base: str) -> dict[str, dict[str, str]]:
    """{trial_id: {table: path}} of the trials whose three files are there and readable."""
    candidates = {tid: p for tid, p in _trial_paths(fs, base).items() if set(p) == set(_DONE_TABLES)}
    ok = _each(fs, lambda p: _complete(fs, p), list(candidates.values()))
    return {tid: p for (tid, p), good in zip(candidates.items(), ok) if good}


def complete_trial_ids(root: str) -> set[str]:
    """Ids of the trials that are done: their trials, per_class and epochs files are all there
    and readable (the trials file holding its one row). Three listings, then one footer read
    per file (in parallel on remote storage). A trial missing here is to be run (again)."""
    fs, base = resolve(root)
    return set(_complete_paths(fs, base))


def complete_trial_status(root: str) -> dict[str, str]:
    """{trial_id: status} ("ok", "stopped", ...) of the trials in `complete_trial_ids`: the
    sweep driver's reconciliation counts stopped trials apart from finished ones."""
    fs, base = resolve(root)
    trials = {tid: p["trials"] for tid, p in _complete_paths(fs, base).items()}

    def status(path: str) -> str:
        t = storage.call("read", path, lambda: pq.read_table(path, filesystem=fs, columns=["status"]))
        return str(t.column("status")[0])

    return dict(zip(trials, _each(fs, status, list(trials.values()))))


def finished_trial_ids(root: str) -> set[str]:
    """The same as `complete_trial_ids` (kept for its callers): a trial whose files cannot be
    read has not finished."""
    return complete_trial_ids(root)


def _trial_files(fs: pafs.FileSystem, base: str, trial_id: str) -> dict[str, str]:
    """{table: path} of one trial's trials/per_class/epochs files, located from its trials row's
    partition (one listing of trials/); per_class/epochs paths are where they must be."""
    name = f"{trial_id}.parquet"
    found = [f for f in _files(fs, f"{base}/trials") if f.base_name == name]
    if not found:
        return {}
    part = found[0].path[len(f"{base}/trials"):].strip("/").rsplit("/", 1)[0]  # source=../nuisance=..
    return {t: f"{base}/{t}/{part}/{name}" for t in _DONE_TABLES}


def trial_files_readable(root: str, trial_id: str) -> bool:
    """Whether one trial is done: its trials, per_class and epochs files all readable."""
    _check_trial_id(trial_id)
    fs, base = resolve(root)
    paths = _trial_files(fs, base, trial_id)
    return bool(paths) and all(
        _footer_error(fs, p, rows=1 if t == "trials" else None) is None for t, p in paths.items())


def read_trial(root: str, trial_id: str) -> dict[str, Any] | None:
    """A finished trial's stored rows, or None if it has not finished: {"trial": its trials row,
    "last_epoch": its last epochs row or None, "per_class": its per_class rows, "epochs": all}.

    A trial whose trials, per_class or epochs file is missing or cannot be read counts as not
    finished (with a warning naming the file): running it again replaces the bad files.
    """
    _check_trial_id(trial_id)
    fs, base = resolve(root)
    paths = _trial_files(fs, base, trial_id)
    if not paths:
        return None
    part = paths["trials"][len(f"{base}/trials"):].strip("/").rsplit("/", 1)[0]
    values = dict(zip(PARTITION_COLUMNS, (urllib.parse.unquote(p.split("=", 1)[1]) for p in part.split("/"))))
    out: dict[str, Any] = {}
    for table, path in paths.items():
        try:
            t = storage.call("read", path, lambda p=path: pq.read_table(p, filesystem=fs, schema=None))
        except (pa.ArrowInvalid, OSError) as err:
            if isinstance(err, (storage.StorageUnavailableError, storage.StorageAccessError)):
                raise
            why = "is missing" if isinstance(err, FileNotFoundError) else f"cannot be read ({err})"
            warnings.warn(f"{path} {why}: trial {trial_id} counts as not finished and runs again "
                          f"(`git-ray verify {root} --repair` moves bad files aside)", stacklevel=2)
            return None
        out[table] = [{**values, **r} for r in t.to_pylist()]
    if len(out["trials"]) != 1:
        warnings.warn(f"{paths['trials']} holds {len(out['trials'])} rows, expected 1: trial {trial_id} "
                      "counts as not finished", stacklevel=2)
        return None
    epochs = sorted(out["epochs"], key=lambda r: r["epoch"])
    return {"trial": out["trials"][0], "last_epoch": epochs[-1] if epochs else None,
            "per_class": out["per_class"], "epochs": epochs}


def trial_exists(root: str, trial_id: str) -> bool:
    """Whether `trial_id` is done (its three files there and readable)."""
    return trial_files_readable(root, trial_id)
