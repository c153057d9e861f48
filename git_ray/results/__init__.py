"""Results: the Parquet schema (as code), the atomic per-trial writer and the reader.

    from git_ray.results import TrialResult, build_result, write_trial, read_tables
"""
from git_ray.results.record import TrialResult, build_result, head_tail_mean
from git_ray.results.schema import (
    CONFIG_COLUMNS, PARTITION_COLUMNS, SCHEMAS, TABLES, TRIAL_METRICS, UNIQUE_KEYS,
)
from git_ray.results.store import (
    SchemaError, clean_staging, complete_trial_ids, dataset, empty_frame, finished_trial_ids, read_table,
    read_trial, read_tables, resolve, trial_exists, trial_file, trial_files_readable, unreadable_files,
    write_failure, write_trial,
)

__all__ = [
    "CONFIG_COLUMNS", "PARTITION_COLUMNS", "SCHEMAS", "TABLES", "TRIAL_METRICS", "UNIQUE_KEYS",
    "SchemaError", "TrialResult", "build_result", "clean_staging", "complete_trial_ids", "dataset",
    "empty_frame", "finished_trial_ids", "head_tail_mean", "read_table", "read_tables", "read_trial",
    "resolve", "trial_exists", "trial_file", "trial_files_readable", "unreadable_files", "write_failure",
    "write_trial",
]
