"""Optuna study storage for a sweep: any Optuna RDB URL, a local journal file (a `*.log` path, or
`journal.log` inside a local folder: Optuna's own JournalFileBackend, which optuna-dashboard
opens), or a journal kept as objects under a remote URI (s3://...), so a study lives beside
remote results too. Optuna has no journal backend for object stores, hence the one below; a
study there is read with `load_study` (or copied to SQLite) rather than by optuna-dashboard.

Under Ray Tune, OptunaSearch runs in the driver: it is the study's only writer. The object-store
journal relies on that (one writer, many readers): each `append_logs` call becomes one immutable
object whose name carries its sequence number, and readers replay the objects in order.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any, Iterable

import optuna
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend, JournalStorage

from git_ray import storage

RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
JOURNAL_FILE = "journal.log"  # inside a local study folder; `optuna-dashboard <folder>/journal.log`


class ObjectStoreJournalBackend(BaseJournalBackend):
    """Optuna journal logs as numbered JSON objects under a folder or URI."""

    def __init__(self, location: str):
        self.location = location.rstrip("/")
        self._logs: list[dict[str, Any]] = []
        self._objects: list[str] = []  # names already replayed into _logs

    def _refresh(self) -> None:
        names = [n for n in storage.listdir(self.location) if n.endswith(".json") and not n.startswith(".")]
        for name in names[len(self._objects):]:
            self._logs.extend(json.loads(storage.read_bytes(storage.join(self.location, name))))
            self._objects.append(name)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        self._refresh()
        return list(self._logs[log_number_from:])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._refresh()
        name = f"{len(self._objects):010d}-{uuid.uuid4().hex[:8]}.json"
        storage.write_bytes(storage.join(self.location, name), json.dumps(logs).encode())
        self._refresh()


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`: RDB URL, `*.log`/`*.journal` file, a local folder (its
    journal.log), or a remote journal folder."""
    scheme = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if scheme in RDB_SCHEMES:
        if scheme == "sqlite":
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        return optuna.storages.RDBStorage(url)
    if scheme == "":
        if url.endswith((".log", ".journal")):
            return JournalStorage(JournalFileBackend(url))
        if any(n.endswith(".json") for n in storage.listdir(url)):  # a study git_ray 0.1 kept as objects
            return JournalStorage(ObjectStoreJournalBackend(url))
        # A local folder: Optuna's own journal file inside it, which optuna-dashboard opens.
        os.makedirs(url, exist_ok=True)
        return JournalStorage(JournalFileBackend(os.path.join(url, JOURNAL_FILE)))
    if storage.is_remote(url):
        return JournalStorage(ObjectStoreJournalBackend(url))
    raise ValueError(f"study storage {url!r}: use an Optuna RDB URL (sqlite:///path.db, "
                     "postgresql://...), a journal file (*.log) or a remote folder URI (s3://...)")


def load_study(url: str, study_name: str) -> optuna.Study:
    """Reopen a sweep's study from its storage (to inspect or analyse it)."""
    return optuna.load_study(study_name=study_name, storage=open_storage(url))
