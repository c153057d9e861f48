"""The generator cache on an object store: s3:// through pyarrow.fs, against a local moto server."""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from git_ray.config import GeneratorConfig
from git_ray.generative import cache as gcache
from git_ray import storage
from git_ray.generative import generator_fingerprint, generator_paths, get_generator
from git_ray.generative.train import train_munit
from test_generative_train import TINY, params, tiny_data

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

BUCKET = "git-ray-generators"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # pyarrow's S3 filesystem reads the endpoint from AWS_ENDPOINT_URL
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield env["AWS_ENDPOINT_URL"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def test_s3_cache_trains_once_then_loads(s3_endpoint, monkeypatch) -> None:
    calls: list[int] = []

    def counting(data, gcfg, **kw):
        calls.append(1)
        return train_munit(data, gcfg, **kw)

    monkeypatch.setattr(gcache, "train_munit", counting)
    data = tiny_data()
    cfg = GeneratorConfig(steps=3, checkpoint_every=2, **TINY)
    cache = f"s3://{BUCKET}/sweeps/gens"
    logs: list[str] = []
    first = get_generator(data, cfg, cache=cache, device="cpu", log=logs.append)
    assert not any("warning" in m for m in logs)  # no cross-node lock given: a lease in the bucket

    paths = generator_paths(cache, generator_fingerprint(data.fingerprint, cfg))
    assert not storage.exists(f"{cache}/{paths['fingerprint']}.lock")  # held while training, then given back
    assert paths["checkpoint"].startswith(f"s3://{BUCKET}/sweeps/gens/")
    assert storage.exists(paths["checkpoint"]) and storage.exists(paths["samples"])
    assert not storage.exists(paths["training_checkpoint"])
    assert json.loads(storage.read_bytes(paths["meta"]))["steps"] == 3

    taken: list[str] = []

    @contextlib.contextmanager
    def lock(fp: str):
        taken.append(fp)
        yield

    logs.clear()
    second = get_generator(data, cfg, cache=cache, device="cpu", lock_factory=lock, log=logs.append)
    assert calls == [1] and taken == []  # found: neither trained nor locked
    assert all(torch.equal(p, q) for p, q in zip(params(first), params(second)))
    get_generator(data, cfg.model_copy(update={"seed": 9}), cache=cache, device="cpu", lock_factory=lock,
                  log=logs.append)
    assert len(calls) == 2 and len(taken) == 1
    assert not any("warning" in m for m in logs)


def test_lease_on_s3_excludes_and_expires(s3_endpoint) -> None:
    import time

    from git_ray.lease import Lease

    where = f"s3://{BUCKET}/sweeps/gens/abc.lock"
    logs: list[str] = []
    a, b = Lease(where, 1.0, settle_s=0.2, log=logs.append), Lease(where, 1.0, settle_s=0.2, log=logs.append)
    assert a.try_acquire() is None  # written, then read back after settle_s: ours
    holder = b.try_acquire()
    assert holder is not None and holder.token == a.token
    time.sleep(1.2)  # no heartbeat for longer than the term
    assert b.try_acquire() is None and any("taking over" in m for m in logs)
    assert not a.renew()
    b.release()
    assert not storage.exists(where)
