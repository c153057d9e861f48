"""The sweep's trial plan and its bookkeeping, without Ray: seeded random-search points, the
driver lease refusing a second driver, the lock actor's leases."""
from __future__ import annotations

import errno
import json
import os
import time

import pytest

from git_ray.config import ConfigError
from git_ray.sweep.runner import DRIVER_LEASE, run_sweep, take_stock
from git_ray.sweep.worker import LockTable
from git_ray.sweep.spec import load_sweep
from tiny_configs import sweep_file


def test_random_search_plans_the_same_distinct_trials_every_time(tmp_path):
    path = sweep_file(tmp_path, "rnd", grid={"seed": [0, 1]}, search={
        "algorithm": "random", "num_samples": 3, "seed": 7,
        "space": {"train.lr": {"loguniform": [0.01, 0.2]}, "model.width": {"int": [2, 4]}}})
    spec = load_sweep(path)
    points = spec.planned_points()
    assert points == load_sweep(path).planned_points()  # a re-run plans the very same trials
    assert len(points) == 6 and {p["seed"] for p in points} == {0, 1}
    assert all(0.01 <= p["train.lr"] <= 0.2 and p["model.width"] in (2, 3, 4) for p in points)
    other = load_sweep(sweep_file(tmp_path, "rnd2", grid={"seed": [0, 1]},
                                  search={**spec.search.model_dump(), "seed": 8}))
    assert other.planned_points() != points
    # choices that repeat a trial plan it once
    few = load_sweep(sweep_file(tmp_path, "few", search={"algorithm": "random", "num_samples": 20,
                                                          "space": {"seed": {"choice": [0, 1]}}}))
    assert sorted(p["seed"] for p in few.planned_points()) == [0, 1]
    assert take_stock(few, few.planned_points()).planned == 2 == few.num_trials()


def test_a_second_driver_is_refused_naming_the_first(tmp_path):
    path = sweep_file(tmp_path, "busy", grid={"seed": [0, 1]})
    root = tmp_path / "results" / "busy"
    root.mkdir(parents=True)
    now = time.time()
    (root / DRIVER_LEASE).write_text(json.dumps({"host": "node-7", "pid": 4242, "token": "x",
                                                 "started_at": now - 100, "heartbeat_at": now,
                                                 "term_s": 60.0}))
    with pytest.raises(ConfigError) as err:
        run_sweep(load_sweep(path))
    msg = str(err.value)
    assert "is being run by node-7:4242 since" in msg and "run again after" in msg
    assert json.loads((root / DRIVER_LEASE).read_text())["pid"] == 4242  # left alone
    assert not (root / "sweep.yaml").exists()  # refused before any work


def test_resume_needs_a_started_sweep(tmp_path):
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(load_sweep(sweep_file(tmp_path, "never", grid={"seed": [0]})), resume=True)


def test_lock_table_leases_expire_and_are_taken_over():
    table = LockTable()
    assert table.acquire("g", "a", "h:1", 0.3) == ("granted", None)
    status, info = table.acquire("g", "b", "h:2", 0.3)
    assert status == "held" and info.startswith("h:1 since")
    time.sleep(0.2)
    assert table.renew("g", "a")
    time.sleep(0.2)  # 0.4 s since taken, 0.2 s since renewed: still held
    assert table.acquire("g", "b", "h:2", 0.3)[0] == "held"
    time.sleep(0.4)  # no renewal for longer than the lease
    assert table.acquire("g", "b", "h:2", 0.3) == ("taken_over", "h:1")
    assert not table.renew("g", "a")  # the old holder learns it lost the lock
    table.release("g", "a")  # and cannot release the new holder's
    assert table.acquire("g", "c", "h:3", 0.3)[0] == "held"
    table.release("g", "b")
    assert table.acquire("g", "c", "h:3", 0.3) == ("granted", None)


def test_a_full_disk_is_named_and_exits_1(tmp_path, monkeypatch, capsys):
    from git_ray.cli import main
    from git_ray.sweep import runner

    real_fsync = os.fsync

    def fsync(fd):  # the disk fills as the sweep writes its sweep.yaml, through the storage layer
        if os.readlink(f"/proc/self/fd/{fd}").endswith("sweep.yaml"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runner, "init_ray", lambda *a, **k: False)  # no Ray needed to reach the write
    monkeypatch.setattr(os, "fsync", fsync)
    path = sweep_file(tmp_path, "full", grid={"seed": [0]})
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert "is full" in err and "no space left on the device writing" in err and "sweep.yaml" in err
    assert "git-ray sweep" in err  # the command to run again
    assert not list((tmp_path / "results" / "full").glob("**/*sweep.yaml"))  # no partial file
    assert not (tmp_path / "results" / "full" / DRIVER_LEASE).exists()  # the lease was given back
