"""Remote storage riding out an outage, against a real S3-compatible server on loopback (moto's
server mode, spoken to over HTTP by pyarrow): the server is stopped in the middle of a trial's
write and started again on the same port a few seconds later; the write completes. A missing
bucket fails at once with a clear message instead of being retried."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

from git_ray import storage
from git_ray.results import complete_trial_ids, read_tables, store, write_trial
from test_results_store import make_cfg, make_result

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "git-ray-retry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    """A moto server on a fixed loopback port (so it can come back on it) and its bucket."""
    port = _free_port()
    servers = [moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)]
    servers[0].start()
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield port, servers
    servers[-1].stop()


def test_a_write_survives_the_server_going_away_and_coming_back(s3, monkeypatch, caplog):
    port, servers = s3
    monkeypatch.setenv(storage.RETRY_ENV, "60")
    real, calls, outage = store._write_parquet, [], 8.0  # longer than pyarrow's own ~6 s of retries

    def restart_later() -> None:
        time.sleep(outage)
        servers.append(moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port))
        servers[-1].start()  # moto keeps its buckets in the process: the same bucket comes back

    restarter = threading.Thread(target=restart_later, daemon=True)

    def stop_after_first(data, path, fs):
        real(data, path, fs)
        calls.append(path)
        if len(calls) == 1:  # per_class is written; the server dies before epochs and trials
            servers[0].stop()
            restarter.start()

    monkeypatch.setattr(store, "_write_parquet", stop_after_first)
    root = f"s3://{BUCKET}/sweeps/demo"
    r = make_result(make_cfg())
    with caplog.at_level(logging.WARNING, logger="git_ray.storage"):
        write_trial(root, r)
    restarter.join()
    assert len(calls) == 3 and len(servers) == 2
    assert any("retry" in rec.message for rec in caplog.records)  # our retries carried it, not luck
    assert complete_trial_ids(root) == {r.trial_id}
    t = read_tables(root)
    assert len(t["trials"]) == 1 and len(t["per_class"]) == 10 and len(t["epochs"]) == 3


def test_a_missing_bucket_fails_at_once_with_a_clear_message(s3, monkeypatch, caplog):
    monkeypatch.setenv(storage.RETRY_ENV, "60")
    with caplog.at_level(logging.WARNING, logger="git_ray.storage"):
        with pytest.raises(storage.StorageAccessError, match="bucket does not exist") as err:
            write_trial("s3://no-such-bucket/sweeps/demo", make_result(make_cfg()))
        with pytest.raises(storage.StorageAccessError, match="bucket does not exist"):
            storage.write_bytes("s3://no-such-bucket/generators/fp/meta.json", b"{}")
    assert "no-such-bucket" in str(err.value)
    assert not any("retry" in rec.message for rec in caplog.records)  # not retried


def test_verify_and_repair_on_s3(s3):
    from git_ray.results.verify import repair, verify

    root = f"s3://{BUCKET}/sweeps/demo"
    good, bad = make_result(make_cfg(seed=0)), make_result(make_cfg(seed=1), seed=1)
    for r in (good, bad):
        write_trial(root, r)
    client = boto3.client("s3")
    key = f"sweeps/demo/trials/dataset_source=digits/dataset_nuisance=background/{bad.trial_id}.parquet"
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=body[:64])  # truncated
    assert complete_trial_ids(root) == {good.trial_id}
    report = verify(root)
    assert [(p.kind, p.location) for p in report.problems if p.kind == "unreadable"] == \
        [("unreadable", f"s3://{BUCKET}/{key}")]
    assert len(report.problems) == 3 and report.trials_ok == 1
    repair(report)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="sweeps/demo/quarantine/")["Contents"])
    assert keys == [f"sweeps/demo/quarantine/{t}/dataset_source=digits/dataset_nuisance=background/{bad.trial_id}.parquet"
                    for t in ("epochs", "per_class", "trials")]
    assert client.get_object(Bucket=BUCKET, Key=keys[2])["Body"].read() == body[:64]  # kept, not deleted
    assert verify(root).clean and complete_trial_ids(root) == {good.trial_id}
