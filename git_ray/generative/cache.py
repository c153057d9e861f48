"""The generator cache: each distinct (data set, generator config) is trained once per storage.

Layout under the cache location (a local folder or a pyarrow.fs URI such as s3://bucket/prefix):

    <cache>/<fingerprint>/generator.pt     final generator weights + spec + config (self-describing)
    <cache>/<fingerprint>/samples.png      sample grid: sources, then the same content in k styles
    <cache>/<fingerprint>/meta.json        config, data fingerprint, steps, seconds, device, and its
                                           quality check (label agreement, nuisance coverage)
    <cache>/<fingerprint>/checkpoint.pt    resumable training state; removed once generator.pt exists
    <cache>/<fingerprint>.lock             the lease of whoever trains it (git_ray.lease), while it trains
    <cache>/_staging/                      local writes in progress (renamed into place when whole)
    <cache>/quarantine/<fingerprint>/      unusable files moved aside (never deleted)

`get_generator` loads generator.pt if it exists and is usable; otherwise it takes the
fingerprint's lock, looks again (another trial may have finished it while we waited), trains
(resuming from checkpoint.pt), and writes generator.pt last, so its presence means "complete".
The lock is a lease: its holder renews it every term/4 seconds; one that stops (killed, node
lost) loses it after the term (default 60 s, $GIT_RAY_LEASE_S), and a waiter takes over and
resumes from checkpoint.pt. A sweep passes a cross-node `lock_factory` (a Ray actor with the same
lease rules); without one the lease record lives in the cache itself (local folder or object store).

Every file is checked before use (`generator_problem`, `checkpoint_problem`): a generator.pt or
checkpoint.pt that cannot be read (truncated), or whose recorded config, data fingerprint or
fingerprint does not match the place it sits in, is moved to `quarantine/` with a warning and the
generator is trained again (from step 0 when the checkpoint was the bad file). `git-ray verify`
runs the same checks over a whole cache (`inspect_entry`).
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from typing import Any, Callable, ContextManager

import torch

from git_ray.config import GeneratorConfig, stable_hash
from git_ray import storage
from git_ray.generative.networks import Munit
from git_ray.generative.quality import (MAX_COVERAGE_DISTANCE, MAX_SHARE_OF_COPY, MIN_LABEL_AGREEMENT,
                                       QUALITY_CHECK_VERSION, passes, quality_check, scored_by)
from git_ray.generative.samples import sample_grid_png
from git_ray.generative.train import train_munit
from git_ray.lease import lease_lock

GENERATOR_FORMAT = "git_ray.munit_generator/1"
CODE_VERSION = 2  # bump when networks or training change, so stale generators are not reused
# Generator config fields added after code version 2's generators were stored: they enter the
# fingerprint only when set, so generators trained before them keep their place in the cache.
ADDED_FIELDS = ("dis_layers", "dis_dim")

LockFactory = Callable[[str], ContextManager[Any]]


def generator_fingerprint(data_fingerprint: str, gcfg: GeneratorConfig) -> str:
    """Stable id of a generator: the data it is trained on and every config field but `cache`
    (where it is stored is not what it is); gcfg.seed is part of it."""
    return _fingerprint(data_fingerprint, gcfg.model_dump(exclude={"cache"}), CODE_VERSION)


def _fingerprint(data_fingerprint: str, config: dict[str, Any], code_version: int) -> str:
    # The same hash from a config as recorded in a file, so a file can be checked against its place.
    config = {k: v for k, v in config.items() if not (k in ADDED_FIELDS and v is None)}
    return stable_hash({"code_version": code_version, "data": data_fingerprint, "generator": config})


def generator_paths(cache: str, fingerprint: str) -> dict[str, str]:
    """Where a generator's files live (they need not exist yet)."""
    folder = storage.join(cache, fingerprint)
    return {"fingerprint": fingerprint, "folder": folder,
            "checkpoint": storage.join(folder, "generator.pt"),
            "training_checkpoint": storage.join(folder, "checkpoint.pt"),
            "samples": storage.join(folder, "samples.png"),
            "meta": storage.join(folder, "meta.json"),
            "staging": storage.join(cache, storage.STAGING),
            "quarantine": storage.join(cache, storage.QUARANTINE, fingerprint)}


def file_lock(path: str, term_s: float | None = None, log: Callable[[str], None] = print,
              wait: bool = True) -> ContextManager[Any]:
    """An exclusive lease on `path` (local file or URI): renewed while held, taken over by a
    waiter `term_s` seconds (default $GIT_RAY_LEASE_S or 60) after its holder stops renewing.
    wait=False: the block gets None at once if another holder has it."""
    return lease_lock(path, term_s, what=f"generator lock {path}", log=log, wait=wait)


def save_generator(munit: Munit, gcfg: GeneratorConfig, data_fingerprint: str) -> bytes:
    buf = io.BytesIO()
    config = gcfg.model_dump(exclude={"cache"})
    torch.save({"format": GENERATOR_FORMAT, "spec": munit.spec, "state": munit.state_dict(),
                "config": config, "data_fingerprint": data_fingerprint, "steps": gcfg.steps,
                "code_version": CODE_VERSION,
                "fingerprint": _fingerprint(data_fingerprint, config, CODE_VERSION)}, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# File checks: is what sits at a fingerprint's place usable, and is it what the place says?


def _read_blob(location: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the torch file's dict, None) or (None, why it cannot be read)."""
    try:
        data = storage.read_bytes(location)
    except FileNotFoundError:
        return None, "is missing"
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged zip / pickle
        return None, f"cannot be read ({type(err).__name__}: {err}; {len(data):,} bytes: truncated?)"
    if not isinstance(blob, dict):
        return None, f"holds a {type(blob).__name__}, not a git_ray file"
    return blob, None


def generator_problem(blob: dict[str, Any], fingerprint: str) -> str | None:
    """Why a loaded generator.pt does not belong at `fingerprint` (None: it does)."""
    if blob.get("format") != GENERATOR_FORMAT:
        return f"is not a git_ray generator (format {blob.get('format')!r})"
    if not isinstance(blob.get("config"), dict) or not isinstance(blob.get("data_fingerprint"), str):
        return "records no generator config or data fingerprint"
    recorded = blob.get("fingerprint")
    if recorded is not None and recorded != fingerprint:
        return f"records fingerprint {recorded}, but sits at {fingerprint}"
    derived = _fingerprint(blob["data_fingerprint"], blob["config"], blob.get("code_version", CODE_VERSION))
    if derived != fingerprint:
        return (f"was trained for another config or data set (its config and data hash to {derived}, "
                f"not {fingerprint})")
    return None


def checkpoint_problem(blob: dict[str, Any], fingerprint: str) -> str | None:
    """Why a loaded training checkpoint.pt does not belong at `fingerprint` (None: it does)."""
    if not isinstance(blob.get("config"), dict) or not isinstance(blob.get("data_fingerprint"), str) \
            or "step" not in blob:
        return "is not a git_ray training checkpoint (no config, data fingerprint or step)"
    derived = _fingerprint(blob["data_fingerprint"], blob["config"], blob.get("code_version", CODE_VERSION))
    if derived != fingerprint:
        return f"was written for another config or data set (they hash to {derived}, not {fingerprint})"
    return None


def meta_problem(data: bytes, fingerprint: str) -> str | None:
    """Why a meta.json does not describe the generator at `fingerprint` (None: it does)."""
    try:
        meta = json.loads(data)
    except ValueError as err:
        return f"cannot be read ({err}: truncated?)"
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if meta.get("fingerprint") != fingerprint:
        return f"records fingerprint {meta.get('fingerprint')!r}, but sits at {fingerprint}"
    config, data_fp = meta.get("config"), meta.get("data_fingerprint")
    if not isinstance(config, dict) or not isinstance(data_fp, str) \
            or _fingerprint(data_fp, config, meta.get("code_version", CODE_VERSION)) != fingerprint:
        return "records a config or data fingerprint that does not hash to its folder's name"
    return None


def inspect_entry(cache: str, fingerprint: str) -> list[tuple[str, str]]:
    """[(file location, problem)] for one cache entry's generator.pt, checkpoint.pt, meta.json."""
    paths = generator_paths(cache, fingerprint)
    problems: list[tuple[str, str]] = []
    for key, check in (("checkpoint", generator_problem), ("training_checkpoint", checkpoint_problem)):
        if not storage.is_file(paths[key]):
            continue
        blob, why = _read_blob(paths[key])
        why = why or check(blob, fingerprint)
        if why:
            problems.append((paths[key], why))
    if storage.is_file(paths["meta"]):
        why = meta_problem(storage.read_bytes(paths["meta"]), fingerprint)
        if why:
            problems.append((paths["meta"], why))
    return problems


def _set_aside(paths: dict[str, str], key: str, why: str, log: Callable[[str], None], then: str) -> None:
    """Quarantine one unusable file of an entry (the caller holds the entry's lock)."""
    name = paths[key].rsplit("/", 1)[-1]
    moved = storage.quarantine(paths[key], storage.join(paths["quarantine"], name))
    log(f"generator: warning: {paths[key]} {why}; moved it to {moved}; {then}")


def _load_checked(paths: dict[str, str], device: torch.device | str) -> tuple[Munit | None, str | None]:
    """(the generator, None) if generator.pt is usable, else (None, why not)."""
    blob, why = _read_blob(paths["checkpoint"])
    why = why or generator_problem(blob, paths["fingerprint"])
    if why:
        return None, why
    return _from_blob(blob, device), None


def load_generator(location: str, device: torch.device | str = "cpu") -> Munit:
    """Rebuild a Munit from a generator.pt (local path or URI), in eval mode on `device`."""
    blob = torch.load(io.BytesIO(storage.read_bytes(location)), map_location=device, weights_only=True)
    if blob.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{location} is not a git_ray generator (format {blob.get('format')!r})")
    return _from_blob(blob, device)


def _from_blob(blob: dict[str, Any], device: torch.device | str) -> Munit:
    with torch.random.fork_rng(devices=[]):  # constructor inits are overwritten; leave no RNG trace
        munit = Munit.from_spec(blob["spec"])
    munit.load_state_dict(blob["state"])
    return munit.to(device).eval()


def _lock_for(cache: str, fp: str, lock_factory: LockFactory | None,
              log: Callable[[str], None], wait: bool = True) -> ContextManager[Any]:
    """The entry's lock. With wait=False the block gets a false value (and holds nothing) when
    another holder has it."""
    if lock_factory is not None:
        return lock_factory(fp) if wait else lock_factory(fp, wait=False)
    return file_lock(storage.join(cache, f"{fp}.lock"), log=log, wait=wait)


def _finished(paths: dict[str, str], data: Any, gcfg: GeneratorConfig, device: torch.device | str,
              log: Callable[[str], None], locked: bool) -> Munit | None:
    """The entry's generator if its generator.pt is usable (scored again first if an older quality
    check scored it: `_rescore_if_stale`). A bad one is reported; under the entry's lock
    (`locked`) it is also set aside, and a bad training checkpoint with it."""
    if storage.is_file(paths["checkpoint"]):
        munit, why = _load_checked(paths, device)
        if munit is not None:
            log(f"generator: loading {paths['checkpoint']}" + (" (trained by another trial)" if locked else ""))
            _rescore_if_stale(munit, data, gcfg, paths, device, log)
            return munit
        if not locked:
            log(f"generator: warning: {paths['checkpoint']} {why}; it will be set aside and trained again")
        else:
            _set_aside(paths, "checkpoint", why, log, then="training it again")
    if locked and storage.is_file(paths["training_checkpoint"]):
        blob, why = _read_blob(paths["training_checkpoint"])
        why = why or checkpoint_problem(blob, paths["fingerprint"])
        del blob  # training loads it again (on the training device)
        if why:
            _set_aside(paths, "training_checkpoint", why, log, then="training starts from step 0")
    return None


def _scored(meta: dict[str, Any], munit: Munit, data: Any, gcfg: GeneratorConfig, device: torch.device | str,
            log: Callable[[str], None]) -> dict[str, Any]:
    """`meta` with the generator's quality check (and its coverage details under their own key)."""
    quality = quality_check(munit, data, device=device, seed=gcfg.seed)
    coverage = quality.pop("coverage")
    log(f"generator: {quality_line(quality)}")
    return {**meta, "quality": quality, "coverage": coverage}


def _rescore_if_stale(munit: Munit, data: Any, gcfg: GeneratorConfig, paths: dict[str, str],
                      device: torch.device | str, log: Callable[[str], None]) -> None:
    """Score a cached generator again when its meta.json holds an older version of the quality
    check (QUALITY_CHECK_VERSION), and rewrite meta.json with the new numbers (atomically; the
    weights are untouched). Every load from the cache goes through it, so trials' rows carry the
    current check's numbers; two processes doing it at once write the same file."""
    meta = _meta_at(paths["meta"])
    version = None if meta is None else scored_by(meta.get("quality") or {})
    if version is None or version >= QUALITY_CHECK_VERSION:
        return
    log(f"generator: {paths['fingerprint']} was scored by version {version} of the quality check; "
        f"scoring it with version {QUALITY_CHECK_VERSION}")
    _write_meta(paths, _scored(meta, munit, data, gcfg, device, log))


def _store(munit: Munit, data: Any, gcfg: GeneratorConfig, paths: dict[str, str], seconds: float,
           device: torch.device | str, log: Callable[[str], None], fused: int = 1) -> None:
    """A freshly trained generator's samples, quality check, meta.json and generator.pt (last:
    its presence marks the entry complete); the training checkpoint goes."""
    staging = paths["staging"]
    storage.write_bytes(paths["samples"], sample_grid_png(munit, data, seed=gcfg.seed, device=device),
                        staging=staging)
    meta = _scored({"fingerprint": paths["fingerprint"], "data_fingerprint": data.fingerprint,
                    "config": gcfg.model_dump(exclude={"cache"}), "steps": gcfg.steps,
                    "seconds": round(seconds, 3), "device": str(device), "code_version": CODE_VERSION,
                    "fused": fused}, munit, data, gcfg, device, log)
    _write_meta(paths, meta)
    storage.write_bytes(paths["checkpoint"], save_generator(munit, gcfg, data.fingerprint), staging=staging)
    storage.delete(paths["training_checkpoint"])  # optimizer + discriminator state: no longer needed
    log(f"generator: trained in {seconds:.1f} s; samples at {paths['samples']}")


def _training_line(gcfg: GeneratorConfig, paths: dict[str, str]) -> str:
    return (f"generator: training {paths['fingerprint']} ({gcfg.steps} steps, batch {gcfg.batch_size}, "
            f"dim {gcfg.dim}) into {paths['folder']}")


def get_generator(data: Any, gcfg: GeneratorConfig, *, cache: str, device: torch.device | str,
                  lock_factory: LockFactory | None = None,
                  log: Callable[[str], None] = print) -> Munit:
    """The trained generator for (data, gcfg): loaded from the cache (and scored again if an older
    quality check scored it), or trained once and stored."""
    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, gcfg))
    munit = _finished(paths, data, gcfg, device, log, locked=False)
    if munit is not None:
        return munit
    with _lock_for(cache, paths["fingerprint"], lock_factory, log):
        munit = _finished(paths, data, gcfg, device, log, locked=True)  # finished by someone else while we waited?
        if munit is not None:
            return munit
        log(_training_line(gcfg, paths))
        start = time.perf_counter()
        munit = train_munit(data, gcfg, device=device, checkpoint_path=paths["training_checkpoint"], log=log)
        _store(munit, data, gcfg, paths, time.perf_counter() - start, device, log)
        return munit


def get_generators(members: list[tuple[Any, GeneratorConfig]], *, cache: str, device: torch.device | str,
                   lock_factory: LockFactory | None = None, stacked: bool | None = None,
                   log: Callable[[str], None] = print) -> list[Munit | Exception]:
    """`get_generator` for G (data, gcfg) at once (`cache` unless a gcfg names its own): those in
    the cache are loaded; the others whose lock this call gets train together
    (`git_ray.generative.fused.train_munits`: stacked on a GPU) and are stored each under its own
    fingerprint, each resuming from its own checkpoint; one whose lock another holder has is
    waited for afterwards, as `get_generator` waits. Returns each member's generator, or the
    error that stopped it (one member's failure, a NaN loss included, is its own). `meta.json`
    records each member's share (1/G) of the fused training time and `fused`: G."""
    from git_ray.generative.fused import train_munits

    out: list[Munit | Exception | None] = [None] * len(members)
    paths = [generator_paths(gcfg.cache or cache, generator_fingerprint(data.fingerprint, gcfg))
             for data, gcfg in members]
    with contextlib.ExitStack() as held:
        todo: list[int] = []
        for i, (data, gcfg) in enumerate(members):
            try:
                out[i] = _finished(paths[i], data, gcfg, device, log, locked=False)
                if out[i] is not None:
                    continue
                if not held.enter_context(_lock_for(gcfg.cache or cache, paths[i]["fingerprint"], lock_factory,
                                                    log, wait=False)):
                    continue  # another holder trains it: waited for below
                out[i] = _finished(paths[i], data, gcfg, device, log, locked=True)
                if out[i] is None:
                    log(_training_line(gcfg, paths[i]))
                    todo.append(i)
            except Exception as err:  # noqa: BLE001
                out[i] = err
        start = time.perf_counter()
        trained = train_munits([(members[i][0], members[i][1], paths[i]["training_checkpoint"]) for i in todo],
                               device=device, stacked=stacked, log=log)
        seconds = (time.perf_counter() - start) / max(len(todo), 1)
        for i, munit in zip(todo, trained):
            out[i] = munit
            if isinstance(munit, Exception):
                log(f"generator: {paths[i]['fingerprint']} failed: {type(munit).__name__}: {munit}")
                continue
            try:
                _store(munit, members[i][0], members[i][1], paths[i], seconds, device, log, fused=len(todo))
            except Exception as err:  # noqa: BLE001
                out[i] = err
    for i, (data, gcfg) in enumerate(members):
        if out[i] is None:  # its lock was held elsewhere: wait for it (or take it over) as alone
            try:
                out[i] = get_generator(data, gcfg, cache=gcfg.cache or cache, device=device,
                                       lock_factory=lock_factory, log=log)
            except Exception as err:  # noqa: BLE001
                out[i] = err
    return out  # type: ignore[return-value]


def read_generator_meta(data: Any, gcfg: GeneratorConfig, *, cache: str) -> dict[str, Any] | None:
    """The meta.json of the generator for (data, gcfg), or None if it was never written."""
    return _meta_at(generator_paths(cache, generator_fingerprint(data.fingerprint, gcfg))["meta"])


def _write_meta(paths: dict[str, str], meta: dict[str, Any]) -> None:
    storage.write_bytes(paths["meta"], json.dumps(meta, indent=2).encode(), staging=paths["staging"])


def _meta_at(path: str) -> dict[str, Any] | None:
    if not storage.exists(path):
        return None
    return json.loads(storage.read_bytes(path))


def quality_line(quality: dict[str, Any] | None) -> str:
    """One human line from a meta.json "quality" entry."""
    if not quality:
        return "quality: not measured"
    cov = quality.get("coverage_distance")
    cov_txt = ("coverage: nothing to measure for nuisance " + repr(quality.get("nuisance")) if cov is None else
               f"coverage distance {cov:.3f} (0 = the true nuisance; <= {MAX_COVERAGE_DISTANCE} passes), "
               f"reach {quality['coverage_reach']:.2f}"
               + (f", a copier scores {copy:.3f} (<= {MAX_SHARE_OF_COPY} of it passes)"
                  if (copy := quality.get("coverage_copy_distance")) is not None else ""))
    return (f"label agreement {quality['label_agreement']:.3f} (>= {MIN_LABEL_AGREEMENT} passes; judge "
            f"{quality['judge_accuracy']:.3f}), {cov_txt}: "
            # judged by today's rule from the stored numbers (a meta.json written before the copier
            # rule keeps its own `passed`)
            + ("passed" if passes(quality["label_agreement"], cov, quality.get("coverage_copy_distance"))
               else "FAILED")
            + ("" if (version := scored_by(quality)) >= QUALITY_CHECK_VERSION else
               f" (scored by version {version} of the check, before its revision: "
               "`git-ray generator CONFIG` scores it again)"))
