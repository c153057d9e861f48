"""The one storage layer: local folders and remote URIs (s3://, gs://, ...) behind a small file API.

Every place that reads or writes sweep files (results, generators, sweep metadata, Optuna
journals) goes through here, so a storage location is always either a local path or a URI that
pyarrow.fs understands. For S3-compatible servers pyarrow reads the endpoint from the
AWS_ENDPOINT_URL environment variable.

What it guarantees:
- Whole-file writes that readers never see half done: locally a temporary file (in a staging
  folder the caller names, or hidden beside the target), fsynced, then `os.replace` (atomic on a
  local disk and on NFS within one export); on an object store one PUT of the finished object
  under its final name (atomic there; there is no rename).
- Retries: every operation that fails for a reason that can pass (a network error, a 5xx or
  throttling answer, a stale NFS handle) is retried with exponential backoff for
  GIT_RAY_STORAGE_RETRY_S seconds (default 60), then raised as StorageUnavailableError.
- A user mistake is not retried: a missing bucket, a refused permission, a path that is a file
  raise StorageAccessError (a ConfigError: the CLI prints it and exits 2) at once.
- A full disk raises StorageFullError (errno ENOSPC) naming the file, with the partial
  temporary removed.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow.fs as pafs
import tenacity

from git_ray.config import ConfigError

T = TypeVar("T")
log = logging.getLogger("git_ray.storage")

RETRY_ENV = "GIT_RAY_STORAGE_RETRY_S"
DEFAULT_RETRY_S = 60.0
# The folder (inside a results root or a generator cache) where local writes are staged before
# their rename; no reader or dataset glob looks there.
STAGING = "_staging"
# Where `git-ray verify --repair` and the generator cache move bad files (never deleted).
QUARANTINE = "quarantine"

# Local errors that can pass on their own (NFS server restarts, interrupted calls).
_TRANSIENT_ERRNO = {errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.EIO}
_FULL_ERRNO = {errno.ENOSPC, errno.EDQUOT}
# What pyarrow's S3 / GCS clients say when the service, not the request, is at fault.
_TRANSIENT_MARKERS = ("NETWORK_CONNECTION", "curlCode", "SERVICE_UNAVAILABLE", "SLOW_DOWN",
                      "INTERNAL_FAILURE", "REQUEST_TIMEOUT", "THROTTLING", "HTTP status 5",
                      "Connection reset", "timed out", "UNAVAILABLE", "DEADLINE_EXCEEDED")
# ... and when the request is wrong: the user must fix the location or the credentials.
_MISTAKES = {
    "NO_SUCH_BUCKET": "the bucket does not exist (or this endpoint cannot see it): create it, or "
                      "fix the storage location",
    "not found. To create buckets": "the bucket does not exist (or this endpoint cannot see it): "
                                    "create it, or fix the storage location",
    "ACCESS_DENIED": "access denied: check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and "
                     "the bucket's policy",
    "HTTP status 403": "access denied: check the credentials and the bucket's policy",
    "INVALID_ACCESS_KEY_ID": "the access key is not known to this endpoint: check AWS_ACCESS_KEY_ID",
    "SIGNATURE_DOES_NOT_MATCH": "the secret key does not match: check AWS_SECRET_ACCESS_KEY",
}


class StorageAccessError(ConfigError):
    """A storage location the user must fix (missing bucket, no permission, a file in the way)."""


class StorageUnavailableError(OSError):
    """Storage kept failing for the whole retry budget (an outage, not a user mistake)."""


class StorageFullError(OSError):
    """No space left on the device (or the quota) while writing a file."""


# ---------------------------------------------------------------------------------------------
# Retries


def retry_budget_s() -> float:
    """Seconds a failing operation is retried for: GIT_RAY_STORAGE_RETRY_S, default 60."""
    raw = os.environ.get(RETRY_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_RETRY_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigError(f"{RETRY_ENV}={raw!r}: expected a number of seconds >= 0 (how long a failing "
                          f"storage operation is retried; default {DEFAULT_RETRY_S:g}); fix or unset it")
    return value


def is_transient(err: BaseException) -> bool:
    """Whether an error may pass if the operation is tried again (see the module docstring)."""
    if not isinstance(err, OSError) or isinstance(err, (StorageFullError, StorageUnavailableError)):
        return False
    if isinstance(err, (FileNotFoundError, PermissionError, FileExistsError, NotADirectoryError,
                        IsADirectoryError)):
        return False
    if err.errno in _FULL_ERRNO:
        return False
    if err.errno in _TRANSIENT_ERRNO:
        return True
    text = str(err)
    return any(m in text for m in _TRANSIENT_MARKERS) and not any(m in text for m in _MISTAKES)


def _as_user_error(err: BaseException, op: str, where: str) -> StorageAccessError | None:
    text = str(err)
    for marker, why in _MISTAKES.items():
        if marker in text:
            return StorageAccessError(f"{where}: {op} failed: {why} ({text})")
    if isinstance(err, PermissionError):
        return StorageAccessError(f"{where}: {op} failed: permission denied; choose a location this "
                                  f"user can write, or fix its permissions ({text})")
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return StorageAccessError(f"{where}: {op} failed: a file is in the way where a folder is needed; "
                                  f"choose another storage location or move the file ({text})")
    return None


def call(op: str, where: str, fn: Callable[[], T], *, budget_s: float | None = None) -> T:
    """Run one storage operation `fn` (named `op`, on location `where`), retrying transient
    failures with exponential backoff for `budget_s` (default: retry_budget_s()).

    Raises StorageAccessError for a user mistake (at once), StorageUnavailableError when the
    budget is spent, StorageFullError for a full disk; other errors pass through unchanged.
    """
    budget = retry_budget_s() if budget_s is None else budget_s
    start = time.monotonic()

    def note(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning("storage: %s %s failed (%s); retry %d in %.1f s (%.0f of %.0f s spent)",
                    op, where, err, state.attempt_number, state.next_action.sleep if state.next_action else 0,
                    time.monotonic() - start, budget)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(budget), wait=tenacity.wait_exponential(multiplier=0.5, max=15),
        retry=tenacity.retry_if_exception(is_transient), before_sleep=note, reraise=True)
    try:
        return retrying(fn)
    except OSError as err:
        if err.errno in _FULL_ERRNO and not isinstance(err, StorageFullError):  # e.g. creating a folder
            raise StorageFullError(
                err.errno, f"{where}: {op} failed: no space left on the device ({err}); free some space "
                f"and run again (finished work is kept)") from err
        user = _as_user_error(err, op, where)
        if user is not None:
            raise user from err
        if is_transient(err):
            raise StorageUnavailableError(
                err.errno, f"{where}: {op} kept failing for {time.monotonic() - start:.0f} s ({err}); "
                f"the storage is unreachable: check the network or the endpoint (AWS_ENDPOINT_URL), or "
                f"retry for longer with {RETRY_ENV}=SECONDS (now {budget:g})") from err
        raise


# ---------------------------------------------------------------------------------------------
# Locations


def is_remote(location: str) -> bool:
    """True for a URI that pyarrow must open (s3://...); False for a plain path or file://."""
    return "://" in location and not location.startswith("file://")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if is_remote(location):
        # from_uri reads credentials and the endpoint (AWS_ENDPOINT_URL) from the environment.
        return pafs.FileSystem.from_uri(location)
    path = location.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


def _info(location: str) -> pafs.FileInfo:
    fs, path = resolve(location)
    return call("stat", location, lambda: fs.get_file_info(path))


def exists(location: str) -> bool:
    """Whether a file or folder is there."""
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return _info(location).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return call("read", location, read)


def write_local_file(path: str, data: bytes) -> None:
    """Write `data` to the new local file `path` and fsync it; on any failure the partial file
    is removed, and a full disk raises StorageFullError naming the file."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as err:
        if os.path.exists(path):
            os.remove(path)
        if isinstance(err, OSError) and err.errno in _FULL_ERRNO:
            free = shutil.disk_usage(os.path.dirname(path)).free
            raise StorageFullError(
                err.errno, f"no space left on the device writing {path} ({len(data):,} bytes; "
                f"{free:,} bytes free there): the partial file was removed and nothing else changed; "
                f"free some space and run again (finished work is kept)") from err
        raise


def _local_dirs(folder: str, where: str) -> None:
    call("create folder", where, lambda: os.makedirs(folder, exist_ok=True))


def write_bytes(location: str, data: bytes, *, staging: str | None = None) -> None:
    """Write a whole file so that readers see all of it or nothing (see the module docstring).

    Local: a temporary in `staging` (a local folder on the same file system), or hidden
    (`.tmp-*`) beside the target when `staging` is None, then an atomic rename. Remote: one PUT.
    """
    fs, path = resolve(location)
    if not isinstance(fs, pafs.LocalFileSystem):
        def put() -> None:
            with fs.open_output_stream(path) as f:
                f.write(data)

        call("write", location, put)
        return
    folder = os.path.dirname(path)
    tmp_dir = resolve(staging)[1] if staging else folder
    _local_dirs(folder, location)
    _local_dirs(tmp_dir, staging or location)
    tmp = os.path.join(tmp_dir, f".tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    call("write", location, lambda: write_local_file(tmp, data))
    try:
        call("rename", location, lambda: os.replace(tmp, path))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def listdir(location: str) -> list[str]:
    """Names directly inside a folder (empty if it does not exist)."""
    fs, path = resolve(location)

    def ls() -> list[str]:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    return call("list", location, ls)


def delete(location: str) -> None:
    """Remove a file or folder if it is there (no error if it is not)."""
    fs, path = resolve(location)

    def rm() -> None:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            fs.delete_file(path)
        elif info.type == pafs.FileType.Directory:
            fs.delete_dir(path)

    call("delete", location, rm)


def quarantine(location: str, into: str) -> str:
    """Move the file `location` to a free name `into` (a file location; `.1`, `.2`, ... appended
    when taken) and return where it went. Never deletes: quarantined files can be inspected.

    Local: a rename. Remote: the object store's copy then delete (not atomic; a reader may see
    both for a moment, never neither).
    """
    fs, src = resolve(location)
    dst = into
    n = 0
    while exists(dst):
        n += 1
        dst = f"{into}.{n}"
    _, dst_path = resolve(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        _local_dirs(os.path.dirname(dst_path), dst)
    call("quarantine", location, lambda: fs.move(src, dst_path))
    return dst


def clean_staging(folder: str, older_than_s: float) -> list[str]:
    """Delete the files in a local staging folder older than `older_than_s` (by modification
    time): leftovers of writes killed between their write and their rename. A write in progress
    keeps touching its file and renames it within milliseconds of finishing, so a file untouched
    for minutes belongs to no live writer. Returns what was removed (remote: nothing is staged)."""
    if is_remote(folder):
        return []
    _, path = resolve(folder)
    removed: list[str] = []
    now = time.time()
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return removed
    for entry in entries:
        try:
            if entry.is_file() and now - entry.stat().st_mtime > older_than_s:
                os.remove(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            pass
    return removed
