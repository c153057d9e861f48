"""The one Parquet writer and reader for git_ray results, on local folders and URIs (s3://...).

Layout under a results root (a sweep's folder, or `git-ray train --out`):

    <root>/<table>/dataset_source=<s>/dataset_nuisance=<n>/<trial_id>.parquet

one file per trial per table, so a retried or resumed trial overwrites its own files and never
duplicates rows. A trial's files appear together or not at all:
- local: every table goes to `.tmp-<trial_id>-<uuid>.parquet` beside its final name, then each is
  `os.replace`d, trials last (a trials row means its per_class and epochs rows are there);
  dataset discovery skips dot-names, so readers never see a half-written file.
- remote: each object is written once under its final name (one S3 PUT is atomic), trials last.
Rows are validated against `git_ray.results.schema` before anything is written.

A URI's filesystem comes from `pyarrow.fs.FileSystem.from_uri`; for S3 the endpoint can be set
with the `AWS_ENDPOINT_URL` environment variable (or `?endpoint_override=` in the URI).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
import uuid
from typing import Any, Iterable, Mapping, Sequence

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


def _write_parquet(table: pa.Table, path: str, fs: pafs.FileSystem) -> None:
    pq.write_table(table, path, filesystem=fs)


def _delete(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass


def _write_files(fs: pafs.FileSystem, files: list[tuple[str, pa.Table]], trial_id: str) -> None:
    """Write (final path, table) pairs in order so that they appear together or not at all."""
    if _is_local(fs):
        tmps: list[str] = []
        placed: list[str] = []
        try:
            for final, table in files:
                folder = os.path.dirname(final)
                os.makedirs(folder, exist_ok=True)
                tmps.append(os.path.join(folder, f".tmp-{trial_id}-{uuid.uuid4().hex}.parquet"))
                _write_parquet(table, tmps[-1], fs)
            for tmp, (final, _) in zip(tmps, files):
                os.replace(tmp, final)
                placed.append(final)
        except BaseException:
            for tmp in tmps:
                if os.path.exists(tmp):
                    os.remove(tmp)
            if len(placed) < len(files):  # the last (marking) file is missing: no orphans
                for final in placed:
                    _delete(fs, final)
            raise
        return
    written: list[str] = []
    try:
        for final, table in files:
            _write_parquet(table, final, fs)
            written.append(final)
    except BaseException:
        if len(written) < len(files):
            for final in written:
                _delete(fs, final)
        raise


def write_trial(root: str, result: TrialResult) -> None:
    """Write one finished trial's rows (trials, per_class, epochs) under `root`, atomically.

    Overwrites the trial's earlier files (a retry or resume), and removes its `failed/` record.
    Raises SchemaError, having written nothing, when a row does not match the schema.
    """
    if not isinstance(result, TrialResult):
        raise SchemaError(f"write_trial needs a TrialResult, got {type(result).__name__}")
    rows = {"per_class": result.per_class, "epochs": result.epochs, "trials": [result.trial]}
    (source, nuisance), bodies = _validate(result.trial_id, rows)
    fs, base = resolve(root)
    files = [(f"{_partition_dir(base, n, source, nuisance)}/{result.trial_id}.parquet", bodies[n])
             for n in _WRITE_ORDER]
    _write_files(fs, files, result.trial_id)
    _delete(fs, f"{_partition_dir(base, 'failed', source, nuisance)}/{result.trial_id}.parquet")


def write_failure(root: str, trial_id: str, config: TrialConfig, error: str, attempts: int) -> None:
    """Record a trial that failed after all its retries (one row in `failed/`)."""
    row = {"trial_id": trial_id, **config.flat(), "error": str(error), "attempts": int(attempts)}
    (source, nuisance), bodies = _validate(trial_id, {"failed": [row]})
    fs, base = resolve(root)
    final = f"{_partition_dir(base, 'failed', source, nuisance)}/{trial_id}.parquet"
    _write_files(fs, [(final, bodies["failed"])], trial_id)


# ---------------------------------------------------------------------------------------------
# Reading


def _files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    sel = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return [f for f in fs.get_file_info(sel)
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))]


def dataset(root: str, name: str) -> ds.Dataset | None:
    """The pyarrow dataset of one table with the canonical schema and pinned partitioning,
    or None when the table has no files yet."""
    if name not in SCHEMAS:
        raise ValueError(f"unknown results table {name!r}; choose one of: {', '.join(TABLES)}")
    fs, base = resolve(root)
    folder = f"{base}/{name}"
    if not _files(fs, folder):
        return None
    return ds.dataset(folder, schema=SCHEMAS[name], format="parquet", filesystem=fs,
                      partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"))


def empty_frame(name: str) -> pd.DataFrame:
    """A DataFrame with no rows and the table's columns and dtypes."""
    return SCHEMAS[name].empty_table().to_pandas()


def read_table(root: str, name: str) -> pd.DataFrame:
    """One results table as a DataFrame (partition columns as plain strings); empty if absent.

    Files written by an older schema read their newer (nullable) columns as null.
    """
    d = dataset(root, name)
    return empty_frame(name) if d is None else d.to_table().to_pandas()


def read_tables(root: str, tables: Iterable[str] = TABLES) -> dict[str, pd.DataFrame]:
    """The named results tables under `root` (local folder or URI) as DataFrames."""
    return {name: read_table(root, name) for name in tables}


def finished_trial_ids(root: str) -> set[str]:
    """Ids of the trials with a row in `trials/` (one listing, no file reads)."""
    fs, base = resolve(root)
    return {f.base_name[: -len(".parquet")] for f in _files(fs, f"{base}/trials")}


def read_trial(root: str, trial_id: str) -> dict[str, Any] | None:
    """A finished trial's stored rows, or None if it has not finished: {"trial": its trials row,
    "last_epoch": its last epochs row or None, "per_class": its per_class rows, "epochs": all}."""
    _check_trial_id(trial_id)
    fs, base = resolve(root)
    name = f"{trial_id}.parquet"
    found = [f for f in _files(fs, f"{base}/trials") if f.base_name == name]
    if not found:
        return None
    part = found[0].path[len(f"{base}/trials"):].strip("/").rsplit("/", 1)[0]  # source=../nuisance=..
    out: dict[str, Any] = {}
    for table in ("trials", "per_class", "epochs"):
        path = f"{base}/{table}/{part}/{name}"
        if table != "trials" and fs.get_file_info(path).type != pafs.FileType.File:
            out[table] = []
            continue
        t = pq.read_table(path, filesystem=fs, schema=None)
        values = dict(zip(PARTITION_COLUMNS, (urllib.parse.unquote(p.split("=", 1)[1]) for p in part.split("/"))))
        out[table] = [{**values, **r} for r in t.to_pylist()]
    epochs = sorted(out["epochs"], key=lambda r: r["epoch"])
    return {"trial": out["trials"][0], "last_epoch": epochs[-1] if epochs else None,
            "per_class": out["per_class"], "epochs": epochs}


def trial_exists(root: str, trial_id: str) -> bool:
    """Whether `trial_id` finished (its trials row, written last, is there)."""
    _check_trial_id(trial_id)
    return trial_id in finished_trial_ids(root)
