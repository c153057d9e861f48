"""The generator cache: each distinct (data set, generator config) is trained once per storage.

Layout under the cache location (a local folder or a pyarrow.fs URI such as s3://bucket/prefix):

    <cache>/<fingerprint>/generator.pt     final generator weights + spec + config (self-describing)
    <cache>/<fingerprint>/samples.png      sample grid: sources, then the same content in k styles
    <cache>/<fingerprint>/meta.json        config, data fingerprint, steps, seconds, device, and its
                                           quality check (label agreement, nuisance coverage)
    <cache>/<fingerprint>/checkpoint.pt    resumable training state; removed once generator.pt exists
    <cache>/<fingerprint>.lock             local caches only: the fcntl lock file

`get_generator` loads generator.pt if it exists; otherwise it takes the fingerprint's lock, looks
again (another trial may have finished it while we waited), trains (resuming from checkpoint.pt),
and writes generator.pt last, so its presence means "complete". Trials on many nodes that share an
object store need a cross-node `lock_factory`; without one two nodes may both train (each result
is valid and the second write simply replaces the first).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import time
from typing import Any, Callable, ContextManager, Iterator

import torch

from git_ray.config import GeneratorConfig, stable_hash
from git_ray.generative import storage
from git_ray.generative.networks import Munit
from git_ray.generative.quality import MAX_COVERAGE_DISTANCE, MIN_LABEL_AGREEMENT, quality_check
from git_ray.generative.samples import sample_grid_png
from git_ray.generative.train import train_munit

GENERATOR_FORMAT = "git_ray.munit_generator/1"
CODE_VERSION = 2  # bump when networks or training change, so stale generators are not reused

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


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive fcntl lock on `path` (created if absent), released on exit or process death.
    flock locks belong to the open file, so two threads of one process exclude each other too."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
    if not storage.is_remote(cache):
        return file_lock(storage.join(cache, f"{fp}.lock"))
    log(f"generator: warning: no lock_factory for remote cache {cache}; concurrent trials may "
        f"train generator {fp} more than once")
    return contextlib.nullcontext()


def get_generator(data: Any, gcfg: GeneratorConfig, *, cache: str, device: torch.device | str,
                  lock_factory: LockFactory | None = None,
                  log: Callable[[str], None] = print) -> Munit:
    """The trained generator for (data, gcfg): loaded from the cache, or trained once and stored."""
    fp = generator_fingerprint(data.fingerprint, gcfg)
    paths = generator_paths(cache, fp)
    if storage.exists(paths["checkpoint"]):
        log(f"generator: loading {paths['checkpoint']}")
        return load_generator(paths["checkpoint"], device)
    with _lock_for(cache, fp, lock_factory, log):
        if storage.exists(paths["checkpoint"]):  # finished by someone else while we waited
            log(f"generator: loading {paths['checkpoint']} (trained by another trial)")
            return load_generator(paths["checkpoint"], device)
        log(f"generator: training {fp} ({gcfg.steps} steps, batch {gcfg.batch_size}, dim {gcfg.dim}) "
            f"into {paths['folder']}")
        start = time.perf_counter()
        munit = train_munit(data, gcfg, device=device, checkpoint_path=paths["training_checkpoint"], log=log)
        seconds = time.perf_counter() - start
        storage.write_bytes(paths["samples"], sample_grid_png(munit, data, seed=gcfg.seed, device=device))
        quality = quality_check(munit, data, device=device, seed=gcfg.seed)
        coverage = quality.pop("coverage")  # the details (ranges, noise floor) get their own key
        log(f"generator: {quality_line(quality)}")
        meta = {"fingerprint": fp, "data_fingerprint": data.fingerprint,
                "config": gcfg.model_dump(exclude={"cache"}), "steps": gcfg.steps,
                "seconds": round(seconds, 3), "device": str(device), "code_version": CODE_VERSION,
                "quality": quality, "coverage": coverage}
        storage.write_bytes(paths["meta"], json.dumps(meta, indent=2).encode())
        # Written last: its presence is what marks the entry complete.
        storage.write_bytes(paths["checkpoint"], save_generator(munit, gcfg, data.fingerprint))
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
               f"reach {quality['coverage_reach']:.2f}")
    return (f"label agreement {quality['label_agreement']:.3f} (>= {MIN_LABEL_AGREEMENT} passes; judge "
            f"{quality['judge_accuracy']:.3f}), {cov_txt}: "
            + ("passed" if quality.get("passed") else "FAILED"))
