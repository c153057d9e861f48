"""The generator cache: each distinct (data set, generator config) is trained once per storage.

Layout under the cache location (a local folder or a pyarrow.fs URI such as s3://bucket/prefix):

    <cache>/<fingerprint>/generator.pt     final generator weights + spec + config (self-describing)
    <cache>/<fingerprint>/samples.png      sample grid: sources, then the same content in k styles
    <cache>/<fingerprint>/meta.json        config, data fingerprint, steps, seconds, device
    <cache>/<fingerprint>/checkpoint.pt    resumable training state; removed once generator.pt exists
    <cache>/<fingerprint>.lock             the lease of whoever trains it (git_ray.lease), while it trains

`get_generator` loads generator.pt if it exists; otherwise it takes the fingerprint's lock, looks
again (another trial may have finished it while we waited), trains (resuming from checkpoint.pt),
and writes generator.pt last, so its presence means "complete". The lock is a lease: its holder
renews it every term/4 seconds; one that stops (killed, node lost) loses it after the term
(default 60 s, $GIT_RAY_LEASE_S), and a waiter takes over and resumes from checkpoint.pt. A sweep
passes a cross-node `lock_factory` (a Ray actor with the same lease rules); without one the lease
record lives in the cache itself (local folder or object store).
A generator.pt that does not load (truncated by a crash of the disk or the writer) is treated as
absent: the entry is trained again and the file replaced.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any, Callable, ContextManager

import torch

from git_ray.config import GeneratorConfig, stable_hash
from git_ray.generative import storage
from git_ray.generative.networks import Munit
from git_ray.generative.samples import sample_grid_png
from git_ray.generative.train import train_munit
from git_ray.lease import lease_lock

GENERATOR_FORMAT = "git_ray.munit_generator/1"
CODE_VERSION = 1  # bump when networks or training change, so stale generators are not reused

LockFactory = Callable[[str], ContextManager[Any]]


def generator_fingerprint(data_fingerprint: str, gcfg: GeneratorConfig) -> str:
    """Stable id of a generator: the data it is trained on and every config field but `cache`
    (where it is stored is not what it is); gcfg.seed is part of it."""
    return stable_hash({"code_version": CODE_VERSION, "data": data_fingerprint,
                        "generator": gcfg.model_dump(exclude={"cache"})})


def generator_paths(cache: str, fingerprint: str) -> dict[str, str]:
    """Where a generator's files live (they need not exist yet)."""
    folder = storage.join(cache, fingerprint)
    return {"fingerprint": fingerprint, "folder": folder,
            "checkpoint": storage.join(folder, "generator.pt"),
            "training_checkpoint": storage.join(folder, "checkpoint.pt"),
            "samples": storage.join(folder, "samples.png"),
            "meta": storage.join(folder, "meta.json")}


def file_lock(path: str, term_s: float | None = None,
              log: Callable[[str], None] = print) -> ContextManager[Any]:
    """An exclusive lease on `path` (local file or URI): renewed while held, taken over by a
    waiter `term_s` seconds (default $GIT_RAY_LEASE_S or 60) after its holder stops renewing."""
    return lease_lock(path, term_s, what=f"generator lock {path}", log=log)


def save_generator(munit: Munit, gcfg: GeneratorConfig, data_fingerprint: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": GENERATOR_FORMAT, "spec": munit.spec, "state": munit.state_dict(),
                "config": gcfg.model_dump(exclude={"cache"}), "data_fingerprint": data_fingerprint,
                "steps": gcfg.steps}, buf)
    return buf.getvalue()


def load_generator(location: str, device: torch.device | str = "cpu") -> Munit:
    """Rebuild a Munit from a generator.pt (local path or URI), in eval mode on `device`."""
    blob = torch.load(io.BytesIO(storage.read_bytes(location)), map_location=device, weights_only=True)
    if blob.get("format") != GENERATOR_FORMAT:
        raise ValueError(f"{location} is not a git_ray generator (format {blob.get('format')!r})")
    with torch.random.fork_rng(devices=[]):  # constructor inits are overwritten; leave no RNG trace
        munit = Munit.from_spec(blob["spec"])
    munit.load_state_dict(blob["state"])
    return munit.to(device).eval()


def _lock_for(cache: str, fp: str, lock_factory: LockFactory | None,
              log: Callable[[str], None]) -> ContextManager[Any]:
    if lock_factory is not None:
        return lock_factory(fp)
    return file_lock(storage.join(cache, f"{fp}.lock"), log=log)


def _load_finished(paths: dict[str, str], device: torch.device | str,
                   log: Callable[[str], None], note: str = "") -> Munit | None:
    """The finished generator if its generator.pt is there and loads, else None."""
    if not storage.exists(paths["checkpoint"]):
        return None
    try:
        munit = load_generator(paths["checkpoint"], device)
    except Exception as err:  # truncated or foreign file: train the entry again
        log(f"generator: warning: {paths['checkpoint']} does not load ({type(err).__name__}: "
            f"{str(err)[:200]}); training it again")
        return None
    log(f"generator: loading {paths['checkpoint']}{note}")
    return munit


def get_generator(data: Any, gcfg: GeneratorConfig, *, cache: str, device: torch.device | str,
                  lock_factory: LockFactory | None = None,
                  log: Callable[[str], None] = print) -> Munit:
    """The trained generator for (data, gcfg): loaded from the cache, or trained once and stored."""
    fp = generator_fingerprint(data.fingerprint, gcfg)
    paths = generator_paths(cache, fp)
    found = _load_finished(paths, device, log)
    if found is not None:
        return found
    with _lock_for(cache, fp, lock_factory, log):
        # finished by someone else while we waited
        found = _load_finished(paths, device, log, note=" (trained by another trial)")
        if found is not None:
            return found
        log(f"generator: training {fp} ({gcfg.steps} steps, batch {gcfg.batch_size}, dim {gcfg.dim}) "
            f"into {paths['folder']}")
        start = time.perf_counter()
        munit = train_munit(data, gcfg, device=device, checkpoint_path=paths["training_checkpoint"], log=log)
        seconds = time.perf_counter() - start
        storage.write_bytes(paths["samples"], sample_grid_png(munit, data, seed=gcfg.seed, device=device))
        meta = {"fingerprint": fp, "data_fingerprint": data.fingerprint,
                "config": gcfg.model_dump(exclude={"cache"}), "steps": gcfg.steps,
                "seconds": round(seconds, 3), "device": str(device), "code_version": CODE_VERSION}
        storage.write_bytes(paths["meta"], json.dumps(meta, indent=2).encode())
        # Written last: its presence is what marks the entry complete.
        storage.write_bytes(paths["checkpoint"], save_generator(munit, gcfg, data.fingerprint))
        storage.delete(paths["training_checkpoint"])  # optimizer + discriminator state: no longer needed
        log(f"generator: trained in {seconds:.1f} s; samples at {paths['samples']}")
        return munit
