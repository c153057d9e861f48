"""Preflight: the checks every command runs before any work and before Ray starts.

Each check raises `git_ray.config.ConfigError` (exit 2 at the command line) with one message
that names the key, the value and what to do, and writes nothing that stays: a local location is
only inspected (never created here), an object store gets one small probe object that is deleted
again. The checks are cheap on purpose (no data is loaded, no model built), so a user mistake
costs seconds instead of a trial, a sweep's Ray start-up, or a whole night of PENDING trials.
Nothing here imports Ray; the check that needs Ray's view of the cluster is in
`git_ray.sweep.resources`.
"""
from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from git_ray import storage
from git_ray.config import ConfigError, TrialConfig

if TYPE_CHECKING:
    from git_ray.sweep.spec import SweepSpec

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_writable(location: str, key: str) -> None:
    """`location` (a folder, local or s3://...) exists or can be created, and can be written.

    `key` names where the location came from (`--out`, `storage`, ...) for the message."""
    if storage.is_remote(location):
        _check_object_store(location, key)
        return
    path = Path(location.removeprefix("file://")).expanduser().absolute()
    # The nearest part of the path that exists decides: a file there (or above) blocks the
    # folder, and the folder that exists must let us create entries in it.
    probe = path
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: creating the folder through it fails
            raise ConfigError(f"{key} {location!r}: {str(probe)!r} is a broken symbolic link; "
                              f"remove it or choose another {key}")
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {str(probe)!r} is a file"
        raise ConfigError(f"{key} {location!r} {what}, not a folder; choose a folder for {key} "
                          f"(it is created if missing)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {location!r}: {str(probe)!r} is not writable by this user; "
                          f"choose a folder you can write to for {key}, or fix its permissions")
    # Permission bits do not tell all (root passes os.access everywhere; /proc, /sys or a
    # read-only mount refuse new entries whatever the bits): create one and remove it.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".git_ray-probe-", dir=probe))
    except OSError as err:
        raise ConfigError(f"{key} {location!r}: cannot create anything in {str(probe)!r} "
                          f"({err.strerror or _short(err)}); choose a folder you can write to for {key}") from None


def _check_object_store(location: str, key: str) -> None:
    """The bucket exists and a probe object can be written and deleted under `location`."""
    import pyarrow.fs as pafs

    try:
        fs, path = storage.resolve(location)
    except (OSError, ValueError) as err:  # pyarrow: unknown scheme, malformed URI
        raise ConfigError(f"{key} {location!r} is not a storage location pyarrow can open ({err}); "
                          f"use a local folder or an s3:// URI") from None
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as err:
        raise ConfigError(f"{key} {location!r}: cannot reach the bucket {bucket!r} ({_short(err)}); "
                          "check the credentials (AWS_* variables) and AWS_ENDPOINT_URL") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{key} {location!r}: the bucket {bucket!r} does not exist; create it first "
                          f"(e.g. `aws s3 mb s3://{bucket}`) or choose another {key}")
    probe = f"{path.rstrip('/')}/.git_ray-probe-{uuid.uuid4().hex[:12]}"
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"git_ray preflight")
        fs.delete_file(probe)
    except OSError as err:
        raise ConfigError(f"{key} {location!r}: cannot write to it ({_short(err)}); check that these "
                          "credentials may put and delete objects there") from None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_device(device: str | None, key: str = "--device") -> None:
    """`device` is auto, cpu, cuda or cuda:N, and a CUDA device is there when one is asked for."""
    if device is None:
        return
    if not DEVICE_PATTERN.match(device):
        raise ConfigError(f"{key} {device!r} is not a device; use cpu, cuda or cuda:N (N the GPU's index)")
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{key} {device!r}: this machine has no CUDA GPU that torch can see; "
                          f"use {key} cpu, or run on a GPU machine")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        raise ConfigError(f"{key} {device!r}: this machine has {count} CUDA GPU(s) "
                          f"(cuda:0..cuda:{count - 1}); choose one of those")


def check_data(configs: Iterable[TrialConfig]) -> None:
    """The files of every distinct (source, root) the configs read are present (none are read)."""
    from git_ray.data.sources import check_source_files

    seen: set[tuple[str, str | None]] = set()
    for cfg in configs:
        key = (cfg.dataset.source, cfg.dataset.root)
        if key not in seen:
            seen.add(key)
            check_source_files(*key)


def check_trial_config(cfg: TrialConfig, device: str | None) -> None:
    """What `git-ray train` and `git-ray generator` need before their work: a device that exists
    (the --device flag, else train.device) and the data set's files."""
    check_device(device if device is not None else cfg.train.device,
                 "--device" if device is not None else "train.device")
    check_data([cfg])


def check_generator(cfg: TrialConfig, where: str) -> None:
    """`git-ray generator` builds MUNIT whatever augment.git says: its size rule applies."""
    from git_ray.config import check_downsample

    try:
        check_downsample(cfg.dataset, cfg.generator)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_num_cpus(num_cpus: int | None) -> None:
    if num_cpus is not None and num_cpus < 1:
        raise ConfigError(f"--num-cpus {num_cpus}: a local Ray needs at least 1 CPU to run trials; "
                          "pass --num-cpus 1 or more, or leave it out to use all CPUs")


def sweep_sample_configs(spec: "SweepSpec") -> list[TrialConfig]:
    """Every grid point's config, and with a search also its corners: each distinct data set and
    generator cache a sweep can touch appears among them."""
    from git_ray.sweep.spec import space_corners

    points = spec.grid_points()
    corners = space_corners(spec.search.space) if spec.search else [{}]
    return [spec.trial_config({**p, **c}) for p in points for c in corners]


def check_generator_caches(configs: Iterable[TrialConfig]) -> None:
    """Each GIT config's `generator.cache` writable, where one is set (unset: the generator goes
    under the results folder, checked as that)."""
    for cache in sorted({c.generator.cache for c in configs if c.augment.git and c.generator.cache}):
        check_writable(cache, "generator.cache")


def check_sweep_locations(spec: "SweepSpec", num_cpus: int | None = None) -> None:
    """Where a sweep writes: --num-cpus sensible, storage, generator caches and the study's
    folder writable (what a dry run needs too: it reads the storage)."""
    check_num_cpus(num_cpus)
    check_writable(spec.storage, "storage")
    check_generator_caches(sweep_sample_configs(spec))
    study = spec.study_storage
    if study and study.startswith("sqlite:///"):
        check_writable(str(Path(study.removeprefix("sqlite:///")).parent), "search.study_storage")


def check_sweep_inputs(spec: "SweepSpec", *, address: str | None, num_cpus: int | None) -> None:
    """What a sweep needs to run here: every data set's files present and (for a local Ray,
    judged before it starts) one trial's resources within this machine. A cluster (--address)
    is judged right after the driver connects (git_ray.sweep.runner.init_ray)."""
    check_data(sweep_sample_configs(spec))
    if address is None:
        from git_ray.sweep.resources import check_trials_fit, local_machine

        where = f"the local Ray on this machine{f' (--num-cpus {num_cpus})' if num_cpus else ''}"
        check_trials_fit(spec.resources_per_trial.model_dump(), local_machine(num_cpus), where=where)


def check_sweep(spec: "SweepSpec", *, address: str | None, num_cpus: int | None) -> None:
    """A sweep's whole preflight."""
    check_sweep_locations(spec, num_cpus)
    check_sweep_inputs(spec, address=address, num_cpus=num_cpus)
