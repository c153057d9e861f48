"""Leases (git_ray.lease): exclusion, renewal, expiry and takeover, a SIGKILLed holder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from git_ray.config import ConfigError
from git_ray.lease import Lease, default_term_s, lease_lock


def test_second_taker_is_refused_while_the_holder_renews(tmp_path):
    path = str(tmp_path / "x.lease")
    a, b = Lease(path, 0.6, log=lambda m: None), Lease(path, 0.6, log=lambda m: None)
    assert a.try_acquire() is None
    a.start_heartbeat()
    try:
        time.sleep(1.5)  # well past the term: only the heartbeat keeps it
        holder = b.try_acquire()
        assert holder is not None and holder.token == a.token and holder.pid == os.getpid()
        assert "since" in holder.describe()
    finally:
        a.release()
    assert not os.path.exists(path)
    assert b.try_acquire() is None  # free again


def test_a_lease_without_heartbeat_is_taken_over_with_a_warning(tmp_path):
    path = str(tmp_path / "x.lease")
    logs: list[str] = []
    a, b = Lease(path, 0.5, log=logs.append), Lease(path, 0.5, log=logs.append)
    assert a.try_acquire() is None  # no heartbeat thread: a "hung" holder
    assert b.try_acquire() is not None
    time.sleep(0.7)
    assert b.try_acquire() is None
    assert any("taking over" in m and f":{os.getpid()}" in m for m in logs)
    assert json.loads(Path(path).read_text())["token"] == b.token
    assert not a.renew()  # the old holder learns it lost the lease
    a.release()  # and giving back what it no longer holds leaves the new holder's record
    assert json.loads(Path(path).read_text())["token"] == b.token


def test_lease_lock_excludes_threads_and_waiter_logs_the_holder(tmp_path):
    path = str(tmp_path / "x.lease")
    inside: list[int] = []
    overlap: list[bool] = []
    logs: list[str] = []

    def work(i: int) -> None:
        with lease_lock(path, 1.0, poll_s=0.05, log=logs.append):
            overlap.append(bool(inside))
            inside.append(i)
            time.sleep(0.3)
            inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [False, False, False]
    assert any(m.startswith("waiting for") and "held by" in m for m in logs)


HOLDER = textwrap.dedent("""
    import sys, time
    from git_ray.lease import lease_lock
    with lease_lock(sys.argv[1], float(sys.argv[2]), log=print):
        print("HELD", flush=True)
        time.sleep(600)
""")


def test_sigkilled_holder_loses_the_lock_after_its_term(tmp_path):
    path = str(tmp_path / "gen.lock")
    term = 2.0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(term)], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        logs: list[str] = []
        waiter = Lease(path, term, log=logs.append)
        time.sleep(term * 1.5)
        assert waiter.try_acquire() is not None  # alive and renewing: still held
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        killed = time.monotonic()
        with lease_lock(path, term, poll_s=0.1, log=logs.append):
            waited = time.monotonic() - killed
        assert waited <= term + 1.5, waited  # within about the term
        assert any("taking over" in m for m in logs)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()


def test_lease_term_from_the_environment(monkeypatch):
    monkeypatch.setenv("GIT_RAY_LEASE_S", "5")
    assert default_term_s() == 5.0
    monkeypatch.setenv("GIT_RAY_LEASE_S", "soon")
    with pytest.raises(ConfigError, match="GIT_RAY_LEASE_S"):
        default_term_s()
