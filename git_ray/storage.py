"""Local folders and remote URIs (s3://, gs://, ...) behind one small file API, via pyarrow.fs.

Every place that reads or writes sweep files (results, generators, sweep metadata, Optuna
journals) goes through here, so a storage location is always either a local path or a URI that
pyarrow understands. For S3-compatible servers pyarrow reads the endpoint from the
AWS_ENDPOINT_URL environment variable.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if is_remote(location):
        return pafs.FileSystem.from_uri(location)
    path = location.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def join(location: str, *parts: str) -> str:
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file so that readers see all of it or nothing.

    Local: a hidden temporary in the same folder, then an atomic rename. Remote object stores:
    a single PUT of the finished object, which is atomic there (and there is no rename).
    """
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def listdir(location: str) -> list[str]:
    """Names directly inside a folder (empty if it does not exist)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def delete(location: str) -> None:
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
