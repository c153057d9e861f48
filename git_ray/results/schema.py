"""The Parquet schema as code: one pyarrow schema per results table.

Config columns are derived from `git_ray.config.TrialConfig` itself (every field, flattened with
`_`, typed from its annotation), so adding a config field adds a column without touching this
file. Tables:

- trials:    one row per finished trial (config + summary metrics + provenance)
- per_class: one row per (trial, class) (config + per-class metrics)
- epochs:    one row per (trial, epoch) (training curve; only the partition keys of the config)
- failed:    one row per trial that failed after all retries (config + error)

Evolving the schema: only ever add nullable columns and bump `SCHEMA_VERSION` (in
`git_ray/__init__.py`); readers pass the current schema explicitly, so an older file simply
reads its new columns as null.
"""
from __future__ import annotations

import types
import typing
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel

from git_ray.config import TrialConfig

# Hive partition keys: low-cardinality strings only (never a float hyperparameter).
PARTITION_COLUMNS: tuple[str, ...] = ("dataset_source", "dataset_nuisance")
PARTITION_SCHEMA = pa.schema([pa.field(c, pa.string(), nullable=False) for c in PARTITION_COLUMNS])

TABLES: tuple[str, ...] = ("trials", "per_class", "epochs", "failed")

_SCALARS: dict[type, pa.DataType] = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}


def _arrow_type(annotation: Any, where: str) -> tuple[pa.DataType, bool]:
    """(arrow type, nullable) of one pydantic field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: only `X | None` unions map to a column, got {annotation!r}")
        return _arrow_type(args[0], where)[0], True
    if origin is Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS:
            raise TypeError(f"{where}: Literal values must share one scalar type, got {annotation!r}")
        return _SCALARS[next(iter(kinds))], False
    if annotation in _SCALARS:
        return _SCALARS[annotation], False
    raise TypeError(f"{where}: no Parquet column type for annotation {annotation!r}")


def _config_fields(model: type[BaseModel], prefix: str = "") -> list[pa.Field]:
    out: list[pa.Field] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}_{name}" if prefix else name
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_config_fields(ann, key))
        else:
            typ, nullable = _arrow_type(ann, key)
            # Partition keys can never be null (they name a folder).
            out.append(pa.field(key, typ, nullable=nullable and key not in PARTITION_COLUMNS))
    return out


# Every config field, in TrialConfig().flat() order.
CONFIG_FIELDS: list[pa.Field] = _config_fields(TrialConfig)
CONFIG_COLUMNS: list[str] = [f.name for f in CONFIG_FIELDS]

_ID = pa.field("trial_id", pa.string(), nullable=False)
_TS = pa.timestamp("us", tz="UTC")


def _f64(*names: str) -> list[pa.Field]:
    return [pa.field(n, pa.float64()) for n in names]


TRIAL_METRICS: tuple[str, ...] = (
    "accuracy", "balanced_accuracy", "many_accuracy", "medium_accuracy", "few_accuracy",
    "ekld_mean", "ekld_head", "ekld_tail", "ekld_size_spearman",
)

# The GIT generator's quality check (git_ray.generative.quality; schema 3): null without GIT.
GENERATOR_COLUMNS: tuple[str, ...] = ("generator_coverage", "generator_label_agreement")

TRIALS = pa.schema(
    [_ID, *CONFIG_FIELDS, *_f64(*TRIAL_METRICS, "train_seconds", *GENERATOR_COLUMNS),
     pa.field("device", pa.string()),
     # The Optuna study's trial number when an Optuna search ran the trial (schema 2), else null;
     # the study's trial carries this row's trial_id as its user attribute `git_ray_trial_id`.
     pa.field("optuna_trial_number", pa.int64()),
     pa.field("status", pa.string(), nullable=False),
     pa.field("git_ray_version", pa.string(), nullable=False),
     pa.field("schema_version", pa.int64(), nullable=False),
     pa.field("finished_at", _TS, nullable=False)]
)

PER_CLASS = pa.schema(
    [_ID, *CONFIG_FIELDS,
     pa.field("class_id", pa.int64(), nullable=False),
     pa.field("class_rank", pa.int64(), nullable=False),
     pa.field("train_count", pa.int64(), nullable=False),
     pa.field("test_count", pa.int64(), nullable=False),
     *_f64("accuracy", "ekld", "consistency")]
)

EPOCHS = pa.schema(
    [_ID, *PARTITION_SCHEMA,
     pa.field("epoch", pa.int64(), nullable=False),
     *_f64("lr", "train_loss", "train_accuracy", "val_accuracy", "val_balanced_accuracy", "seconds")]
)

FAILED = pa.schema(
    [_ID, *CONFIG_FIELDS,
     pa.field("error", pa.string(), nullable=False),
     pa.field("attempts", pa.int64(), nullable=False),
     pa.field("failed_at", _TS, nullable=False)]
)

SCHEMAS: dict[str, pa.Schema] = {"trials": TRIALS, "per_class": PER_CLASS, "epochs": EPOCHS, "failed": FAILED}

# Rows of one trial are unique on these columns.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id",), "per_class": ("trial_id", "class_id"),
    "epochs": ("trial_id", "epoch"), "failed": ("trial_id",),
}

# Filled by the writer when a row leaves them out (provenance the trial code need not know).
WRITER_COLUMNS: dict[str, tuple[str, ...]] = {
    "trials": ("status", "git_ray_version", "schema_version", "finished_at"),
    "per_class": (), "epochs": (), "failed": ("failed_at",),
}


def file_schema(table: str) -> pa.Schema:
    """The schema of one file body: the table's schema without the hive partition columns."""
    schema = SCHEMAS[table]
    for c in PARTITION_COLUMNS:
        schema = schema.remove(schema.get_field_index(c))
    return schema
