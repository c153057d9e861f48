"""The storage helpers on local folders (the s3:// side is tested against a loopback S3 server
in the cluster tests)."""
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
