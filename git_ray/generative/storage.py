"""Whole-file bytes I/O on a local folder or a pyarrow.fs URI (s3://, gs://, file://, ...).

The generator cache and checkpoints need only three operations: does a file exist, read it whole,
write it whole so that readers see the old file or the new one, never half of one. Locally that
is a temporary file in the same folder and `os.replace`; on object stores a single finished PUT
(`open_output_stream` then close) is already atomic and there is no rename.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import pyarrow.fs as pafs


def is_remote(location: str) -> bool:
    """True for a URI that pyarrow must open (s3://...); False for a plain path or file://."""
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(_local(base), *parts)


def _remote(location: str) -> tuple[pafs.FileSystem, str]:
    # from_uri reads credentials and the endpoint (AWS_ENDPOINT_URL) from the environment.
    return pafs.FileSystem.from_uri(location)


def exists(location: str) -> bool:
    if not is_remote(location):
        return os.path.isfile(_local(location))
    fs, path = _remote(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    if not is_remote(location):
        with open(_local(location), "rb") as f:
            return f.read()
    fs, path = _remote(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write `data` to `location` atomically (see the module docstring)."""
    if is_remote(location):
        fs, path = _remote(location)
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = _local(location)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # Dot-prefixed temporary name in the same folder: same file system, so os.replace is atomic.
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def delete(location: str) -> None:
    """Remove a file if it exists (no error if it does not)."""
    if not is_remote(location):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_local(location))
        return
    fs, path = _remote(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)
