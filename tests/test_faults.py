"""Faults injected on purpose into tiny sweeps: each test ends with every trial recorded exactly
once and readable by pyarrow, DuckDB and polars.

- the driver SIGKILLed during phase 0 (a generator half trained) and again mid-trials, a second
  driver refused while the first runs (and while its lease is fresh), then re-runs; then
  truncated trials, per_class and generator files and a re-run that redoes exactly those;
- Ctrl-C (SIGINT to the driver): exit 130, the counts and the command to run the rest;
- the generator lock's holder SIGKILLed while training: a waiter takes over after the lease and
  resumes from the checkpoint;
- the S3 server stopped for 10 s mid-sweep (the storage layer's retries carry the trials over it).
Every process a test starts runs in its own process group and is killed at the end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_configs import TINY_BASE, TINY_GEN, sweep_file

ROOT = Path(__file__).parent.parent
GEN_BASE = {**TINY_BASE, "augment": {"git": True, "git_start": "start", "gen_frac": 0.5},
            "generator": {**TINY_GEN, "steps": 80, "checkpoint_every": 5}}


class Drivers:
    """Starts `git-ray sweep` processes, each in its own session; kills whatever is left."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
                    "OMP_NUM_THREADS": "1"}

    def start(self, sweep: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
        log = self.tmp_path / f"driver-{len(self.procs)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "git_ray.cli", "sweep", str(sweep), "--num-cpus", "2",
                                 *extra], env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def run(self, sweep: Path, *extra: str, timeout: float = 300) -> tuple[int, str]:
        proc, log = self.start(sweep, *extra)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        return rc, log.read_text()

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            proc.wait(timeout=60)

    def cleanup(self) -> None:
        for proc in self.procs:
            self.kill(proc)


@pytest.fixture
def drivers(tmp_path):
    d = Drivers(tmp_path)
    yield d
    d.cleanup()


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended (exit {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def trial_files(root: Path, table: str = "trials") -> list[Path]:
    return sorted(p for p in (root / table).rglob("*.parquet") if not p.name.startswith((".", "_")))


def assert_recorded_exactly_once(root: Path, n: int, classes: int = 10, epochs: int = 3) -> None:
    """n trials, each once, in all three tables, by pyarrow, DuckDB and polars alike."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds

    for table, per_trial in (("trials", 1), ("per_class", classes), ("epochs", epochs)):
        folder = root / table
        t = ds.dataset(str(folder), format="parquet", partitioning="hive").to_table()
        ids = t.column("trial_id").to_pylist()
        assert len(ids) == n * per_trial and len(set(ids)) == n, (table, len(ids), len(set(ids)))
        rows, distinct = duckdb.sql(
            f"select count(*), count(distinct trial_id) from read_parquet('{folder}/**/*.parquet', "
            "hive_partitioning=true)").fetchall()[0]
        assert (rows, distinct) == (n * per_trial, n), (table, rows, distinct)
        frame = pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True).collect()
        assert frame.height == n * per_trial and frame["trial_id"].n_unique() == n, table


def test_driver_killed_in_phase0_and_mid_trials_second_driver_truncated_files(tmp_path, drivers):
    sweep = sweep_file(tmp_path, "faults", base=GEN_BASE, max_concurrent_trials=1, lease_s=3,
                       grid={"seed": [0, 1, 2]})
    root = tmp_path / "results" / "faults"
    gens = tmp_path / "results" / "generators"

    # 1. a second driver while the first runs (it takes its lease before Ray starts)
    first, _ = drivers.start(sweep)
    wait_for(lambda: (root / "_driver.json").exists(), 120, "the first driver's lease", first)
    rc, out = drivers.run(sweep, timeout=120)
    assert rc == 2 and "is being run by" in out and f":{first.pid} since" in out, out[-2000:]
    # 2. SIGKILL during phase 0, once the generator has a training checkpoint
    wait_for(lambda: any(gens.glob("*/checkpoint.pt")), 180, "a generator checkpoint", first)
    drivers.kill(first)
    assert not any(gens.glob("*/generator.pt")) and not trial_files(root)
    time.sleep(3.5)  # the dead driver's lease (lease_s: 3) expires

    # 3. the re-run resumes the generator from its checkpoint; SIGKILL once a trial has its rows
    second, log = drivers.start(sweep)
    wait_for(lambda: len(trial_files(root)) >= 1, 240, "the first trial's rows", second)
    drivers.kill(second)
    assert "taking over" in log.read_text() and "resuming from" in log.read_text(), log.read_text()[-3000:]
    assert 1 <= len(trial_files(root)) < 3
    time.sleep(3.5)

    rc, out = drivers.run(sweep, timeout=300)
    assert rc == 0, out[-3000:]
    assert "already have their rows" in out and "0 missing" in out
    assert_recorded_exactly_once(root, 3)

    # 4. truncated files: one trial's trials file, another's per_class file, the generator
    trials, per_class = trial_files(root), trial_files(root, "per_class")
    trials[0].write_bytes(trials[0].read_bytes()[:40])
    victim = next(p for p in per_class if p.name != trials[0].name)
    victim.write_bytes(victim.read_bytes()[:40])
    generator = next(gens.glob("*/generator.pt"))
    generator.write_bytes(generator.read_bytes()[:100])
    rc, out = drivers.run(sweep, timeout=300)
    assert rc == 0, out[-3000:]
    assert "1 of 3 trial(s) already have their rows" in out and "2 finished now" in out, out[-3000:]
    assert "cannot be read" in out and "trained again" in out  # the generator was trained again
    assert_recorded_exactly_once(root, 3)


def test_ctrl_c_stops_the_sweep_with_130_then_a_rerun_finishes(tmp_path, drivers):
    sweep = sweep_file(tmp_path, "ctrlc", max_concurrent_trials=1, grid={"seed": [0, 1, 2, 3]})
    root = tmp_path / "results" / "ctrlc"
    proc, log = drivers.start(sweep)
    wait_for(lambda: len(trial_files(root)) >= 1, 240, "the first trial's rows", proc)
    os.kill(proc.pid, signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches it
    rc = proc.wait(timeout=120)
    out = log.read_text()
    assert rc == 130, out[-3000:]
    assert "interrupted" in out and "missing" in out and f"git-ray sweep {sweep}" in out, out[-3000:]
    assert not (root / "_driver.json").exists()  # the lease was given back
    done = len(trial_files(root))
    assert 1 <= done < 4
    rc, out = drivers.run(sweep, timeout=300)
    assert rc == 0, out[-3000:]
    assert f"{done} of 4 trial(s) already have their rows" in out
    assert_recorded_exactly_once(root, 4)


HOLDER = """
import sys
from git_ray.config import trial_config
from git_ray.data import build_dataset
from git_ray.generative import get_generator
cfg = trial_config({**BASE, "generator": GEN})
get_generator(build_dataset(cfg.dataset), cfg.generator, cache=sys.argv[1], device="cpu", log=print)
"""


def test_lock_holder_killed_while_training_a_generator_waiter_takes_over(tmp_path):
    import torch

    from git_ray.config import trial_config
    from git_ray.data import build_dataset
    from git_ray.generative import generator_fingerprint, get_generator

    gen = {**TINY_GEN, "steps": 80, "checkpoint_every": 5}
    cache = tmp_path / "gens"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GIT_RAY_LEASE_S": "2", "OMP_NUM_THREADS": "1"}
    code = f"BASE = {TINY_BASE!r}\nGEN = {gen!r}\n" + HOLDER
    holder = subprocess.Popen([sys.executable, "-c", code, str(cache)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cfg = trial_config({**TINY_BASE, "generator": gen})
        data = build_dataset(cfg.dataset)
        wait_for(lambda: any(cache.glob("*/checkpoint.pt")), 120, "a checkpoint", holder)
        assert any(cache.glob("*.lock"))  # the holder's lease
        Drivers.kill(holder)
        killed = time.monotonic()
        logs: list[str] = []
        os.environ["GIT_RAY_LEASE_S"] = "2"
        try:
            with torch.random.fork_rng():
                get_generator(data, cfg.generator, cache=str(cache), device="cpu",
                              log=lambda m: logs.append((time.monotonic() - killed, m)))
        finally:
            del os.environ["GIT_RAY_LEASE_S"]
        took_over = [t for t, m in logs if "taking over" in m]
        resumed = [m for _, m in logs if "resuming from" in m]
        assert took_over and took_over[0] <= 2 + 2.0, logs[:5]  # within about the lease
        assert resumed and "step 0/" not in resumed[0], resumed
        fp = generator_fingerprint(data.fingerprint, cfg.generator)
        assert (cache / fp / "generator.pt").is_file() and not (cache / f"{fp}.lock").exists()
    finally:
        Drivers.kill(holder)


def test_s3_server_stopped_for_10s_mid_sweep(tmp_path, drivers):
    """Needs the storage layer's retries (every storage operation rides out about a minute)."""
    import socket

    import boto3
    import moto.server as moto_server
    from pyarrow import fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    drivers.env.update(aws)
    try:
        client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="faults")
        sweep = sweep_file(tmp_path, "outage", max_concurrent_trials=1, grid={"seed": [0, 1, 2, 3]})
        text = sweep.read_text().replace(str(tmp_path / "results"), "s3://faults/sweeps")
        sweep.write_text(text)

        def rows() -> int:
            listed = client.list_objects_v2(Bucket="faults", Prefix="sweeps/outage/trials/")
            return len(listed.get("Contents", []))

        proc, log = drivers.start(sweep)
        wait_for(lambda: rows() >= 1, 240, "the first trial's rows", proc)
        server.stop()  # moto keeps its objects in this process: the restarted server has them
        time.sleep(10)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        rc = proc.wait(timeout=300)
        assert rc == 0, log.read_text()[-3000:]
        local = tmp_path / "copy"
        for k, v in aws.items():
            os.environ.setdefault(k, v)
        s3fs, path = pafs.FileSystem.from_uri("s3://faults/sweeps/outage")
        pafs.copy_files(path, str(local), source_filesystem=s3fs, destination_filesystem=pafs.LocalFileSystem())
        assert_recorded_exactly_once(local, 4)
    finally:
        server.stop()
