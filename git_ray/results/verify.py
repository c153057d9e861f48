"""`git-ray verify`: read every file of a sweep and of its generators, report what is wrong, and on
request move the bad files into quarantine (never deleting them) so that the next run redoes them.

What counts as a problem (the `kind` of a Problem):
- unreadable: a Parquet file (trials, per_class, epochs, failed) that cannot be read whole
  (truncated by a killed writer or a full disk);
- schema: a readable file whose columns do not match `git_ray.results.schema` (a required column
  missing, a column of another type, an unknown column), or whose rows do not belong to the trial
  its name says, or a trials/failed file not holding exactly one row;
- orphan: per_class or epochs rows without their trial's trials row; a trials row without its
  per_class or epochs file; a failure record of a trial that has since finished;
- leftover: temporaries of interrupted writes: `.tmp-*` / `_tmp-*` / non-Parquet files inside the
  table folders, staging files older than STALE_STAGING_S in `_staging/`, stale `.tmp-*` files in
  a generator's folder; also a file where the hive layout puts no file;
- generator: a generator.pt, checkpoint.pt or meta.json that cannot be read or whose recorded
  fingerprint, config or data do not hash to the folder it sits in.

Repair moves every file of a damaged trial (so its trials row disappears and the sweep runs it
again) to `<sweep>/quarantine/<same relative path>`, and a bad generator file to
`<generators>/quarantine/<fingerprint>/` (where the generator cache itself puts the files it
refuses); a name already taken there gets `.1`, `.2`, ... appended, and a hidden temporary's
name loses its leading `.` / `_` (in quarantine it is to be looked at, not a live temporary).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from git_ray import storage
from git_ray.config import ConfigError
from git_ray.results.schema import PARTITION_COLUMNS, TABLES, file_schema
from git_ray.results.store import STALE_STAGING_S, resolve, staging_dir

KINDS = ("unreadable", "schema", "orphan", "leftover", "generator")
_TRIAL_TABLES = ("trials", "per_class", "epochs")
_ONE_ROW = ("trials", "failed")


@dataclass(frozen=True)
class Problem:
    """One bad file: its kind (see the module docstring), where it is, and what is wrong."""

    kind: str
    location: str  # local path or URI
    shown: str  # the location relative to the sweep (or generator cache), for people
    detail: str
    quarantine_to: str  # where repair moves it


@dataclass
class Report:
    """What `verify` found in one sweep folder and its generator cache."""

    root: str
    generators: str | None
    files: int = 0
    trials_ok: int = 0
    generators_ok: int = 0
    problems: list[Problem] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def _uri(root: str, fs: pafs.FileSystem, path: str) -> str:
    """A location for a path inside `fs`: the path itself locally, scheme://path remotely."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{root.split('://', 1)[0]}://{path}"


def _list(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    sel = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return [f for f in storage.call("list", folder, lambda: fs.get_file_info(sel)) if f.type == pafs.FileType.File]


def _schema_problem(table: str, t: pa.Table, trial_id: str) -> str | None:
    want = file_schema(table)
    have = t.schema
    for f in have:
        if want.get_field_index(f.name) < 0:
            return f"unexpected column {f.name!r} (not in the {table} schema)"
        expected = want.field(f.name).type
        if not f.type.equals(expected):
            return f"column {f.name!r} is {f.type}, the {table} schema says {expected}"
    for f in want:
        if not f.nullable and have.get_field_index(f.name) < 0:
            return f"required column {f.name!r} is missing"
    ids = set(t.column("trial_id").to_pylist())
    if ids - {trial_id}:
        return f"rows carry trial_id {sorted(ids - {trial_id})[:3]}, but the file is named {trial_id}"
    if table in _ONE_ROW and t.num_rows != 1:
        return f"holds {t.num_rows} rows; a {table} file holds exactly one"
    return None


def _visible(rel: str) -> str:
    """The same relative path with the file's leading dots / underscores dropped: a quarantined
    `.tmp-*` file is there to be looked at, and must not read as a live temporary."""
    folder, _, name = rel.rpartition("/")
    name = name.lstrip("._") or name
    return f"{folder}/{name}" if folder else name


def _layout_ok(rel: str) -> bool:
    """`dataset_source=S/dataset_nuisance=N/<trial_id>.parquet` inside a table folder."""
    parts = rel.split("/")
    return (len(parts) == len(PARTITION_COLUMNS) + 1
            and all(p.startswith(f"{c}=") and len(p) > len(c) + 1 for p, c in zip(parts, PARTITION_COLUMNS)))


def default_generators(root: str) -> str | None:
    """The generator cache a sweep used: its sweep.yaml's base generator.cache or
    <storage>/generators; else a `generators/` folder inside the results (`git-ray train --out`)
    or beside it. None when there is none."""
    try:
        spec = yaml.safe_load(storage.read_bytes(storage.join(root, "sweep.yaml")))
    except (FileNotFoundError, yaml.YAMLError):
        spec = None
    if isinstance(spec, dict):
        gen = ((spec.get("base") or {}).get("generator") or {}).get("cache")
        if gen:
            return gen
        if spec.get("storage"):
            return storage.join(spec["storage"], "generators")
    for candidate in (storage.join(root, "generators"), storage.join(storage.parent(root), "generators")):
        if storage.exists(candidate):
            return candidate
    return None


def _check_tables(report: Report, fs: pafs.FileSystem, base: str, stale_s: float) -> None:
    root = report.root
    quarantine = f"{base}/{storage.QUARANTINE}"
    # (table, partition, trial id) -> path of every good file; ids of damaged trials.
    good: dict[tuple[str, str, str], str] = {}
    damaged: set[tuple[str, str]] = set()
    found: dict[tuple[str, str], dict[str, str]] = {}  # (partition, id) -> {table: path}

    def add(kind: str, path: str, detail: str) -> None:
        rel = path[len(base):].strip("/")
        report.problems.append(Problem(kind, _uri(root, fs, path), rel, detail,
                                       _uri(root, fs, f"{quarantine}/{_visible(rel)}")))

    for table in TABLES:
        folder = f"{base}/{table}"
        for info in _list(fs, folder):
            report.files += 1
            rel = info.path[len(folder):].strip("/")
            name = info.base_name
            if name.startswith((".tmp-", "_tmp-", ".")) or not name.endswith(".parquet"):
                add("leftover", info.path, "a temporary of an interrupted write (or a stray file) "
                                           "inside a table folder: readers may pick it up")
                continue
            if not _layout_ok(rel):
                add("leftover", info.path, "not where the layout puts a file "
                                           "(dataset_source=S/dataset_nuisance=N/<trial_id>.parquet)")
                continue
            part, trial_id = rel.rsplit("/", 1)[0], name[: -len(".parquet")]
            found.setdefault((part, trial_id), {})[table] = info.path
            try:
                t = storage.call("read", info.path, lambda p=info.path: pq.read_table(p, filesystem=fs))
            except (pa.ArrowInvalid, OSError) as err:
                if isinstance(err, (storage.StorageUnavailableError, storage.StorageAccessError)):
                    raise
                # pyarrow repeats the path in its message; the table already shows it.
                msg = re.sub(r"Could not open Parquet input source '[^']*': ", "", str(err))
                add("unreadable", info.path, f"{msg} ({info.size:,} bytes: truncated?)")
                damaged.add((part, trial_id))
                continue
            why = _schema_problem(table, t, trial_id)
            if why:
                add("schema", info.path, why)
                damaged.add((part, trial_id))
                continue
            good[(table, part, trial_id)] = info.path

    for (part, trial_id), files in sorted(found.items()):
        trial_files = {t: p for t, p in files.items() if t in _TRIAL_TABLES}
        if (part, trial_id) in damaged:
            # Every other file of a damaged trial goes too, so that the trial reads as missing.
            flagged = {p.location for p in report.problems}
            for t, p in sorted(trial_files.items()):
                if _uri(root, fs, p) not in flagged:
                    add("orphan", p, f"belongs to trial {trial_id}, whose other files are bad: "
                                     "moved with them so the trial runs again")
            continue
        if not trial_files:
            continue  # only a failure record
        if "trials" not in trial_files:
            for t, p in sorted(trial_files.items()):
                add("orphan", p, f"{t} rows of trial {trial_id}, which has no trials row "
                                 "(a write that did not finish)")
            continue
        lacking = [t for t in _TRIAL_TABLES if t not in trial_files]
        if lacking:
            for t, p in sorted(trial_files.items()):
                add("orphan", p, f"trial {trial_id} lacks its {' and '.join(lacking)} file: "
                                 "it counts as not finished")
            continue
        report.trials_ok += 1
        if "failed" in files and (("failed", part, trial_id) in good):
            add("orphan", files["failed"], f"failure record of trial {trial_id}, which has since finished")

    now = time.time()
    for info in _list(fs, staging_dir(base)):
        report.files += 1
        age = now - info.mtime.timestamp() if info.mtime else float("inf")
        if age > stale_s:
            add("leftover", info.path, f"staged {age / 60:.0f} min ago and never renamed into place "
                                       "(its writer was killed)")


def _check_generators(report: Report, stale_s: float) -> None:
    from git_ray.generative.cache import inspect_entry

    cache = report.generators
    if not cache or not storage.exists(cache):
        return
    fs, base = resolve(cache)
    now = time.time()

    def add(kind: str, location: str, rel: str, detail: str, to: str) -> None:
        report.problems.append(Problem(kind, location, f"generators/{rel}", detail, to))

    entries = storage.call("list", cache, lambda: fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)))
    for entry in sorted(entries, key=lambda e: e.base_name):
        name = entry.base_name
        if entry.type != pafs.FileType.Directory or name == storage.QUARANTINE:
            continue  # <fp>.lock files, the quarantine itself
        files = _list(fs, entry.path)
        report.files += len(files)
        if name == storage.STAGING:
            for info in files:
                age = now - info.mtime.timestamp() if info.mtime else float("inf")
                if age > stale_s:
                    rel = f"{storage.STAGING}/{info.base_name}"
                    add("leftover", _uri(cache, fs, info.path), rel,
                        f"staged {age / 60:.0f} min ago and never renamed into place",
                        storage.join(cache, storage.QUARANTINE, _visible(rel)))
            continue
        bad = inspect_entry(cache, name)
        for location, why in bad:
            fname = location.rsplit("/", 1)[-1]
            add("generator", location, f"{name}/{fname}", why, storage.join(cache, storage.QUARANTINE, name, fname))
        for info in files:
            age = now - info.mtime.timestamp() if info.mtime else float("inf")
            if info.base_name.startswith((".tmp-", "_tmp-")) and age > stale_s:
                add("leftover", _uri(cache, fs, info.path), f"{name}/{info.base_name}",
                    "a temporary of an interrupted write",
                    storage.join(cache, storage.QUARANTINE, name, _visible(info.base_name)))
        if not bad and any(f.base_name == "generator.pt" for f in files):
            report.generators_ok += 1


def verify(root: str, generators: str | None = None, *, stale_s: float = STALE_STAGING_S) -> Report:
    """Read every file of the sweep at `root` and of its generator cache (`generators`, default
    `default_generators(root)`); ConfigError when `root` is not a results folder."""
    fs, base = resolve(root)
    info = storage.call("stat", root, lambda: fs.get_file_info(base))
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{root}: no such folder; pass a sweep's results folder (<storage>/<sweep name>)")
    if info.type != pafs.FileType.Directory:
        raise ConfigError(f"{root}: not a folder; pass a sweep's results folder (<storage>/<sweep name>)")
    markers = (*TABLES, "sweep.yaml", storage.STAGING)
    if not any(storage.exists(storage.join(root, m)) for m in markers):
        raise ConfigError(f"{root}: not a results folder (none of trials/, per_class/, epochs/, failed/, "
                          "sweep.yaml here); pass a sweep's results folder (<storage>/<sweep name>)")
    report = Report(root=root, generators=generators if generators is not None else default_generators(root))
    _check_tables(report, fs, base, stale_s)
    _check_generators(report, stale_s)
    return report


def repair(report: Report) -> list[tuple[str, str]]:
    """Move every problem's file into quarantine (never delete); returns (from, to) pairs."""
    for p in report.problems:
        try:
            to = storage.quarantine(p.location, p.quarantine_to)
        except FileNotFoundError:  # gone meanwhile (a live sweep rewrote or moved it)
            continue
        report.moved.append((p.location, to))
    return report.moved


def _table(rows: Iterable[tuple[str, str, str]]) -> list[str]:
    rows = list(rows)
    w0 = max(len("problem"), *(len(r[0]) for r in rows))
    w1 = min(90, max(len("file"), *(len(r[1]) for r in rows)))
    lines = [f"{'problem':<{w0}}  {'file':<{w1}}  detail"]
    for kind, shown, detail in rows:
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        lines.append(f"{kind:<{w0}}  {shown:<{w1}}  {detail}")
    return lines


def format_report(report: Report) -> str:
    """A readable summary and table of problems (and of what repair moved)."""
    gens = (f"; generators {report.generators}: {report.generators_ok} whole" if report.generators
            else "; no generator cache found")
    trials = f"{report.trials_ok} trial{'s' * (report.trials_ok != 1)}"
    head = f"verify {report.root}: {report.files} files read, {trials} whole{gens}"
    if report.clean:
        return head + "\nno problems found"
    counts = ", ".join(f"{sum(p.kind == k for p in report.problems)} {k}" for k in KINDS
                       if any(p.kind == k for p in report.problems))
    lines = [head, f"{len(report.problems)} problem(s): {counts}", ""]
    lines += _table((p.kind, p.shown, p.detail) for p in report.problems)
    lines.append("")
    if report.moved:
        lines.append(f"moved {len(report.moved)} file(s) into quarantine (nothing deleted), e.g. "
                     f"{report.moved[0][0]} -> {report.moved[0][1]}; run the sweep again "
                     "(`git-ray sweep SWEEP.yaml --resume`) to redo the trials they belonged to")
    else:
        lines.append(f"to move them aside (nothing is deleted) so that the next run redoes those trials: "
                     f"git-ray verify {report.root} --repair")
    return "\n".join(lines)

