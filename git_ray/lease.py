"""Leases: locks that a holder keeps only while it keeps renewing them (no Ray here).

A lease is a small JSON record (holder host and pid, a random token, when it started, when it
was last renewed, its term) in a local folder or at a URI (s3://...). Its holder renews it from
a background thread every `term/4` seconds; a holder that stops renewing (killed, its node lost,
hung) loses it once the last heartbeat is older than the term, and the next taker takes it over
with a warning. Used for one driver per sweep (`<sweep>/_driver.json`) and for the generator
cache's per-fingerprint lock (`<cache>/<fingerprint>.lock`).

Mutual exclusion of the read-decide-write step:
- local folders: an fcntl lock on a hidden sidecar file (`.<name>.mutex`), held for
  milliseconds and released by the kernel if its process dies;
- object stores (S3 has no compare-and-swap): write the record, wait `settle_s`, read it back;
  the taker whose token is there holds the lease. Two takers can both win only if one of them
  takes longer than `settle_s` between reading "free" and writing its record (documented in
  docs/reliability.md).
Expiry compares wall clocks: hosts sharing a lease must keep their clocks within the term (NTP).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from git_ray import storage

DEFAULT_TERM_S = 60.0
REPORT_EVERY_S = 30.0  # a waiter says who holds the lock this often
TERM_ENV = "GIT_RAY_LEASE_S"  # the default term for commands without a sweep file (git-ray train)


def default_term_s() -> float:
    """The lease term: $GIT_RAY_LEASE_S if set (a positive number), else 60 s."""
    raw = os.environ.get(TERM_ENV)
    if raw is None:
        return DEFAULT_TERM_S
    try:
        term = float(raw)
    except ValueError:
        term = -1.0
    if not term > 0:
        from git_ray.config import ConfigError
        raise ConfigError(f"{TERM_ENV}={raw!r}: the lease term must be a positive number of seconds; "
                          f"unset it for the default {DEFAULT_TERM_S:g}")
    return term


@dataclass(frozen=True)
class LeaseRecord:
    host: str
    pid: int
    token: str
    started_at: float  # wall-clock seconds since the epoch
    heartbeat_at: float
    term_s: float

    @property
    def holder(self) -> str:
        return f"{self.host}:{self.pid}"

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat_at

    def expired(self, now: float | None = None) -> bool:
        return self.age_s(now) > self.term_s

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        return f"{self.holder} since {since} (last heartbeat {self.age_s():.0f} s ago)"


class Heartbeat:
    """Calls `renew()` every `every_s` seconds on a daemon thread until stopped; `renew` returning
    False (the lease was taken over) sets `lost` and ends the thread."""

    def __init__(self, renew: Callable[[], bool], every_s: float, on_lost: Callable[[], None] = lambda: None):
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renew, self._every, self._on_lost = renew, every_s, on_lost
        self._thread = threading.Thread(target=self._run, daemon=True, name="git_ray-lease-heartbeat")

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                held = self._renew()
            except Exception:  # storage briefly unreachable: try again next beat, the term allows it
                continue
            if not held:
                self.lost.set()
                self._on_lost()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_until(try_take: Callable[[], str | None], *, what: str, poll_s: float,
               log: Callable[[str], None], report_every_s: float = REPORT_EVERY_S) -> None:
    """Call `try_take()` until it returns None (taken); it returns who holds it otherwise. Logs who
    holds it at the first refusal and then every `report_every_s` seconds."""
    last_report = -float("inf")
    while True:
        holder = try_take()
        if holder is None:
            return
        now = time.monotonic()
        if now - last_report >= report_every_s:
            log(f"waiting for {what}: held by {holder}")
            last_report = now
        time.sleep(poll_s)


class Lease:
    """One lease record at `location` (a local file path or a URI)."""

    def __init__(self, location: str, term_s: float | None = None, *, settle_s: float = 0.5,
                 log: Callable[[str], None] = print):
        self.location = location
        self.term_s = default_term_s() if term_s is None else float(term_s)
        if not self.term_s > 0:
            raise ValueError(f"lease term must be positive, got {term_s!r}")
        self.settle_s = settle_s
        self.log = log
        self.remote = storage.is_remote(location)
        self.token = uuid.uuid4().hex
        self.started_at = time.time()
        self._heartbeat: Heartbeat | None = None

    # -- the record --------------------------------------------------------------------------
    def read(self) -> LeaseRecord | None:
        """The current record, or None if there is none (a damaged record counts as none: its
        writer died mid-write, which a local write cannot do and a PUT leaves no trace of)."""
        try:
            return LeaseRecord(**json.loads(storage.read_bytes(self.location)))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):
            return None
        except OSError as err:
            if any(m in str(err).lower() for m in ("not found", "no such", "does not exist")):
                return None
            raise

    def _mine(self) -> LeaseRecord:
        now = time.time()
        return LeaseRecord(host=socket.gethostname(), pid=os.getpid(), token=self.token,
                           started_at=self.started_at, heartbeat_at=now, term_s=self.term_s)

    def _write(self) -> None:
        storage.write_bytes(self.location, json.dumps(asdict(self._mine())).encode())

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise read-decide-write among the processes of this machine (local leases)."""
        if self.remote:
            yield
            return
        folder, name = os.path.split(os.path.abspath(self.location))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f".{name}.mutex"), "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- taking, renewing, giving back ---------------------------------------------------------
    def try_acquire(self) -> LeaseRecord | None:
        """Take the lease if it is free, ours, or expired (with a warning); return None when taken,
        else the live record of its holder."""
        with self._exclusive():
            current = self.read()
            if current is not None and current.token != self.token and not current.expired():
                return current
            if current is not None and current.token != self.token:
                self.log(f"warning: taking over {self.location} from {current.holder}: no heartbeat "
                         f"for {current.age_s():.0f} s (lease term {current.term_s:g} s)")
            self._write()
        if self.remote:  # no compare-and-swap: let a concurrent taker's PUT land, then look
            time.sleep(self.settle_s)
            back = self.read()
            if back is None:  # our record vanished: someone took it and gave it back; try again
                now = time.time()
                return LeaseRecord(host="?", pid=0, token="", started_at=now, heartbeat_at=now,
                                   term_s=self.term_s)
            if back.token != self.token:
                return back
        return None

    def renew(self) -> bool:
        """Write a fresh heartbeat if the lease is still ours; False if someone took it over."""
        with self._exclusive():
            current = self.read()
            if current is None or current.token != self.token:
                return False
            self._write()
            return True

    def start_heartbeat(self) -> Heartbeat:
        def lost() -> None:
            self.log(f"warning: lost the lease {self.location} (taken over after a missed heartbeat)")

        self._heartbeat = Heartbeat(self.renew, every_s=max(0.1, self.term_s / 4), on_lost=lost).start()
        return self._heartbeat

    def release(self) -> None:
        """Stop renewing and delete the record if it is still ours."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        with self._exclusive():
            current = self.read()
            if current is not None and current.token == self.token:
                storage.delete(self.location)

    @property
    def lost(self) -> bool:
        return self._heartbeat is not None and self._heartbeat.lost.is_set()


@contextlib.contextmanager
def lease_lock(location: str, term_s: float | None = None, *, what: str | None = None,
               poll_s: float | None = None, log: Callable[[str], None] = print,
               wait: bool = True) -> Iterator[Lease | None]:
    """Hold the lease at `location` for the block: wait (logging who holds it every 30 s) until it
    is free or expired, renew it in the background, give it back at the end. With wait=False a
    lease another holder keeps alive is not waited for: the block gets None and holds nothing."""
    lease = Lease(location, term_s, log=log)
    poll = poll_s if poll_s is not None else min(1.0, lease.term_s / 4)

    def take() -> str | None:
        holder = lease.try_acquire()
        return None if holder is None else holder.describe()

    if not wait:
        if take() is not None:
            yield None
            return
    else:
        wait_until(take, what=what or location, poll_s=poll, log=log)
    lease.start_heartbeat()
    try:
        yield lease
    finally:
        lease.release()
