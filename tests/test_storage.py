"""The storage helpers on local folders (the s3:// side is tested against a loopback S3 server
in the cluster tests)."""
import os

from git_ray import storage


def test_write_read_list_delete(tmp_path):
    loc = str(tmp_path / "a" / "b" / "f.json")
    storage.write_bytes(loc, b"hello")
    assert storage.exists(loc) and storage.read_bytes(loc) == b"hello"
    storage.write_bytes(loc, b"again")  # replaces whole
    assert storage.read_bytes(loc) == b"again"
    assert storage.listdir(str(tmp_path / "a" / "b")) == ["f.json"]  # no temporaries left
    assert storage.listdir(str(tmp_path / "nope")) == []
    storage.delete(loc)
    assert not storage.exists(loc)


def test_remote_detection_and_join():
    assert storage.is_remote("s3://bucket/x") and not storage.is_remote("/tmp/x")
    assert not storage.is_remote("file:///tmp/x")
    assert storage.join("s3://b/p/", "q", "/r.parquet") == "s3://b/p/q/r.parquet"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import os

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    loc = str(tmp_path / "g.bin")
    try:
        storage.write_bytes(loc, b"x" * 100)
    except OSError:
        pass
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Retries, user mistakes, full disks

import errno  # noqa: E402
import logging  # noqa: E402

import pytest  # noqa: E402

from git_ray.config import ConfigError  # noqa: E402


def test_transient_failures_are_retried_then_succeed(caplog):
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during PutObject operation: curlCode: 7")
        return "done"

    with caplog.at_level(logging.WARNING, logger="git_ray.storage"):
        assert storage.call("write", "s3://b/k", flaky, budget_s=30) == "done"
    assert len(attempts) == 3
    assert sum("retry" in r.message and "s3://b/k" in r.message for r in caplog.records) == 2


def test_an_outage_longer_than_the_budget_is_named():
    def down() -> None:
        raise OSError("AWS Error NETWORK_CONNECTION: Could not connect to server")

    with pytest.raises(storage.StorageUnavailableError) as err:
        storage.call("read", "s3://b/k", down, budget_s=0.6)
    assert "s3://b/k: read kept failing" in str(err.value) and storage.RETRY_ENV in str(err.value)


@pytest.mark.parametrize("error, kind", [
    (OSError("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload: The specified bucket does not exist"),
     "bucket does not exist"),
    (OSError("AWS Error ACCESS_DENIED during PutObject"), "access denied"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
])
def test_user_mistakes_are_not_retried(error, kind):
    attempts: list[int] = []

    def wrong() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(storage.StorageAccessError, match=kind) as err:
        storage.call("write", "s3://nope/k", wrong, budget_s=30)
    assert attempts == [1] and isinstance(err.value, ConfigError) and "s3://nope/k" in str(err.value)


def test_other_errors_pass_through_unchanged():
    attempts: list[int] = []

    def missing() -> None:
        attempts.append(1)
        raise FileNotFoundError(errno.ENOENT, "Path does not exist 'b/k'")

    with pytest.raises(FileNotFoundError):
        storage.call("read", "s3://b/k", missing, budget_s=30)
    assert attempts == [1]


def test_a_file_in_the_way_of_a_folder_is_a_clear_error(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(storage.StorageAccessError, match="a file is in the way"):
        storage.write_bytes(str(tmp_path / "results" / "sweep" / "sweep.yaml"), b"x")


def test_retry_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(storage.RETRY_ENV, raising=False)
    assert storage.retry_budget_s() == storage.DEFAULT_RETRY_S
    monkeypatch.setenv(storage.RETRY_ENV, "2.5")
    assert storage.retry_budget_s() == 2.5
    monkeypatch.setenv(storage.RETRY_ENV, "soon")
    with pytest.raises(ConfigError, match=f"{storage.RETRY_ENV}='soon'"):
        storage.retry_budget_s()


def test_a_full_disk_is_named_and_the_temporary_removed(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    target = tmp_path / "gen" / "generator.pt"
    with pytest.raises(storage.StorageFullError, match="no space left on the device writing") as err:
        storage.write_bytes(str(target), b"x" * 1000, staging=str(tmp_path / "_staging"))
    assert err.value.errno == errno.ENOSPC and "generator.pt" in str(err.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_full_disk_anywhere_in_the_storage_layer_is_a_storage_full_error(tmp_path, monkeypatch):
    """Not only file writes: a folder that cannot be made on a full disk says so too (and is not
    retried as if it might pass)."""
    calls = []

    def makedirs(path, exist_ok=False):
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "makedirs", makedirs)
    with pytest.raises(storage.StorageFullError, match="create folder failed: no space left") as err:
        storage.write_bytes(str(tmp_path / "sweep" / "trials" / "t.parquet"), b"rows")
    assert err.value.errno == errno.ENOSPC and "t.parquet" in str(err.value) and len(calls) == 1


def test_staged_writes_and_quarantine(tmp_path):
    target = str(tmp_path / "gen" / "fp" / "generator.pt")
    storage.write_bytes(target, b"weights", staging=str(tmp_path / "gen" / "_staging"))
    assert storage.read_bytes(target) == b"weights" and os.listdir(tmp_path / "gen" / "_staging") == []
    into = str(tmp_path / "gen" / "quarantine" / "fp" / "generator.pt")
    assert storage.quarantine(target, into) == into and not storage.exists(target)
    storage.write_bytes(target, b"again")
    assert storage.quarantine(target, into) == into + ".1"  # never overwrites an earlier one
    assert storage.read_bytes(into) == b"weights" and storage.read_bytes(into + ".1") == b"again"
