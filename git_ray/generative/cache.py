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

import io
import json
import time
from typing import Any, Callable, ContextManager

import torch

from git_ray.config import GeneratorConfig, stable_hash
from git_ray import storage
from git_ray.generative.networks import Munit
from git_ray.generative.quality import MAX_COVERAGE_DISTANCE, MIN_LABEL_AGREEMENT, quality_check
from git_ray.generative.samples import sample_grid_png
from git_ray.generative.train import train_munit
from git_ray.lease import lease_lock

GENERATOR_FORMAT = "git_ray.munit_generator/1"
CODE_VERSION = 2  # bump when networks or training change, so stale generators are not reused

LockFactory = Callable[[str], ContextManager[Any]]


def generator_fingerprint(data_fingerprint: str, gcfg: GeneratorConfig) -> str:
    """Stable id of a generator: the data it is trained on and every config field but `cache`
    (where it is stored is not what it is); gcfg.seed is part of it."""
    return _fingerprint(data_fingerprint, gcfg.model_dump(exclude={"cache"}), CODE_VERSION)


def _fingerprint(data_fingerprint: str, config: dict[str, Any], code_version: int) -> str:
    # The same hash from a config as recorded in a file, so a file can be checked against its place.
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


def file_lock(path: str, term_s: float | None = None,
              log: Callable[[str], None] = print) -> ContextManager[Any]:
    """An exclusive lease on `path` (local file or URI): renewed while held, taken over by a
    waiter `term_s` seconds (default $GIT_RAY_LEASE_S or 60) after its holder stops renewing."""
    return lease_lock(path, term_s, what=f"generator lock {path}", log=log)


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
              log: Callable[[str], None]) -> ContextManager[Any]:
    if lock_factory is not None:
        return lock_factory(fp)
    return file_lock(storage.join(cache, f"{fp}.lock"), log=log)


def get_generator(data: Any, gcfg: GeneratorConfig, *, cache: str, device: torch.device | str,
                  lock_factory: LockFactory | None = None,
                  log: Callable[[str], None] = print) -> Munit:
    """The trained generator for (data, gcfg): loaded from the cache, or trained once and stored."""
    fp = generator_fingerprint(data.fingerprint, gcfg)
    paths = generator_paths(cache, fp)
    if storage.is_file(paths["checkpoint"]):
        munit, why = _load_checked(paths, device)
        if munit is not None:
            log(f"generator: loading {paths['checkpoint']}")
            return munit
        log(f"generator: warning: {paths['checkpoint']} {why}; it will be set aside and trained again")
    with _lock_for(cache, fp, lock_factory, log):
        if storage.is_file(paths["checkpoint"]):  # finished by someone else while we waited?
            munit, why = _load_checked(paths, device)
            if munit is not None:
                log(f"generator: loading {paths['checkpoint']} (trained by another trial)")
                return munit
            _set_aside(paths, "checkpoint", why, log, then="training it again")
        if storage.is_file(paths["training_checkpoint"]):
            blob, why = _read_blob(paths["training_checkpoint"])
            why = why or checkpoint_problem(blob, fp)
            del blob  # train_munit loads it again (on the training device)
            if why:
                _set_aside(paths, "training_checkpoint", why, log, then="training starts from step 0")
        log(f"generator: training {fp} ({gcfg.steps} steps, batch {gcfg.batch_size}, dim {gcfg.dim}) "
            f"into {paths['folder']}")
        start = time.perf_counter()
        munit = train_munit(data, gcfg, device=device, checkpoint_path=paths["training_checkpoint"], log=log)
        seconds = time.perf_counter() - start
        staging = paths["staging"]
        storage.write_bytes(paths["samples"], sample_grid_png(munit, data, seed=gcfg.seed, device=device),
                            staging=staging)
        quality = quality_check(munit, data, device=device, seed=gcfg.seed)
        coverage = quality.pop("coverage")  # the details (ranges, noise floor) get their own key
        log(f"generator: {quality_line(quality)}")
        meta = {"fingerprint": fp, "data_fingerprint": data.fingerprint,
                "config": gcfg.model_dump(exclude={"cache"}), "steps": gcfg.steps,
                "seconds": round(seconds, 3), "device": str(device), "code_version": CODE_VERSION,
                "quality": quality, "coverage": coverage}
        storage.write_bytes(paths["meta"], json.dumps(meta, indent=2).encode(), staging=staging)
        # Written last: its presence is what marks the entry complete.
        storage.write_bytes(paths["checkpoint"], save_generator(munit, gcfg, data.fingerprint), staging=staging)
        storage.delete(paths["training_checkpoint"])  # optimizer + discriminator state: no longer needed
        log(f"generator: trained in {seconds:.1f} s; samples at {paths['samples']}")
        return munit


def read_generator_meta(data: Any, gcfg: GeneratorConfig, *, cache: str) -> dict[str, Any] | None:
    """The meta.json of the generator for (data, gcfg), or None if it was never written."""
    path = generator_paths(cache, generator_fingerprint(data.fingerprint, gcfg))["meta"]
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
               + (f", a copier scores {copy:.3f}" if (copy := quality.get("coverage_copy_distance"))
                  is not None else ""))
    return (f"label agreement {quality['label_agreement']:.3f} (>= {MIN_LABEL_AGREEMENT} passes; judge "
            f"{quality['judge_accuracy']:.3f}), {cov_txt}: "
            + ("passed" if quality.get("passed") else "FAILED"))
