"""Remote storage against a real S3-compatible server on loopback (moto's server mode, spoken to
over HTTP by pyarrow, boto3 and Ray exactly as they would speak to S3): the generator cache, the
Optuna journal, and a whole 2-trial Ray Tune sweep whose results and Tune state live in s3://.

Nothing is mocked on the client side: the endpoint comes from AWS_ENDPOINT_URL, which pyarrow
(results, generators, journal) and Ray Tune (storage_path) both read from the environment; the
local Ray workers inherit it from this process. The bucket has versioning on, so "written once"
is read off the server (one version of an object), not inferred from logs.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import yaml

import boto3  # noqa: E402
import moto.server as moto_server  # noqa: E402

from git_ray.results import read_tables  # noqa: E402
from git_ray.sweep.spec import load_sweep  # noqa: E402

BUCKET = "git-ray-test"

from tiny_configs import CHECKER, TINY_BASE, TINY_GEN  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1, the AWS_* variables pointing at it, a versioned bucket."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client
    server.stop()


@pytest.fixture(scope="module")
def ray_local(s3):
    """Local Ray started after the AWS_* variables are set, so its workers inherit them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []) if not o["Key"].endswith("/"))


def versions(client, key: str) -> int:
    out = client.list_object_versions(Bucket=BUCKET, Prefix=key)
    return sum(1 for v in out.get("Versions", []) if v["Key"] == key)


def test_generator_cache_on_s3_trains_once_then_loads(s3):
    from git_ray.config import DatasetConfig, GeneratorConfig
    from git_ray.data import build_dataset
    from git_ray.generative import generator_fingerprint, get_generator

    data = build_dataset(DatasetConfig(**TINY_BASE["dataset"]))
    gcfg = GeneratorConfig(**TINY_GEN)
    cache = f"s3://{BUCKET}/gencache"
    logs: list[str] = []
    first = get_generator(data, gcfg, cache=cache, device="cpu", log=logs.append)
    fp = generator_fingerprint(data.fingerprint, gcfg)
    assert keys(s3, f"gencache/{fp}/") == [f"gencache/{fp}/{n}" for n in ("generator.pt", "meta.json", "samples.png")]
    meta = json.loads(s3.get_object(Bucket=BUCKET, Key=f"gencache/{fp}/meta.json")["Body"].read())
    assert meta["fingerprint"] == fp and meta["steps"] == TINY_GEN["steps"]

    logs.clear()
    second = get_generator(data, gcfg, cache=cache, device="cpu", log=logs.append)
    assert any("loading" in m for m in logs) and not any("training" in m for m in logs)
    assert versions(s3, f"gencache/{fp}/generator.pt") == 1  # the second request wrote nothing
    assert versions(s3, f"gencache/{fp}/meta.json") == 1
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert (a == b).all()


def test_optuna_study_on_s3_journal_reopens(s3):
    import optuna

    from git_ray.sweep.optuna_storage import load_study, open_storage

    url = f"s3://{BUCKET}/studies/demo/optuna-journal"
    study = optuna.create_study(study_name="demo", storage=open_storage(url), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", -1, 1) ** 2), n_trials=4)
    objects = keys(s3, "studies/demo/optuna-journal/")
    assert objects and all(k.endswith(".json") for k in objects)

    again = load_study(url, "demo")  # a fresh storage object: replays the journal from S3
    assert [t.params["x"] for t in again.trials] == [t.params["x"] for t in study.trials]
    assert again.best_value == study.best_value
    again.tell(again.ask({"x": optuna.distributions.FloatDistribution(-1, 1)}), 0.5)  # add, reopen
    assert len(load_study(url, "demo").trials) == 5


def test_two_trial_sweep_on_s3(tmp_path, s3, ray_local):
    from pyarrow import fs as pafs

    from git_ray.sweep.runner import run_sweep

    storage = f"s3://{BUCKET}/sweeps"
    path = tmp_path / "s3sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s3sweep", "storage": storage, "max_concurrent_trials": 2,
                                    "resources_per_trial": {"cpu": 1}, "base": TINY_BASE,
                                    "grid": {"seed": [0, 1]}}))
    counts = run_sweep(load_sweep(path))
    assert counts == {"planned": 2, "finished": 2, "skipped": 0, "stopped": 0, "failed": 0,
                      "missing": 0, "interrupted": 0}

    objects = keys(s3, "sweeps/s3sweep/")
    assert "sweeps/s3sweep/sweep.yaml" in objects and "sweeps/s3sweep/environment.json" in objects
    # Ray Tune's own experiment state went to S3 too (storage_path on s3, endpoint from the env).
    assert any(k.startswith("sweeps/s3sweep/_tune/") for k in objects)
    for table in ("trials", "per_class", "epochs"):
        assert sum(k.startswith(f"sweeps/s3sweep/{table}/") for k in objects) == 2
    assert not [k for k in objects if k.rsplit("/", 1)[-1].startswith((".tmp", "_tmp"))]

    root = f"{storage}/s3sweep"
    t = read_tables(root)
    trials, per_class, epochs = t["trials"], t["per_class"], t["epochs"]
    # check_results.py's contract, on the rows read back through s3://
    assert sorted(trials["seed"]) == [0, 1] and not trials["trial_id"].duplicated().any()
    assert len(per_class) == 2 * 10 and not per_class.duplicated(["trial_id", "class_id"]).any()
    assert len(epochs) == 2 * 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    assert set(per_class["trial_id"]) == set(trials["trial_id"]) == set(epochs["trial_id"])
    assert (per_class["ekld"] >= -1e-6).all() and per_class["accuracy"].between(0, 1).all()
    assert per_class["consistency"].between(0, 1).all() and (per_class["train_count"] > 0).all()
    assert trials["balanced_accuracy"].between(0, 1).all() and (trials["train_seconds"] > 0).all()
    assert set(trials["dataset_source"]) == {"digits"} and set(trials["dataset_nuisance"]) == {"background"}

    # ... and the checker itself, on a plain copy of what is in the bucket
    local = tmp_path / "copy"
    s3fs, s3path = pafs.FileSystem.from_uri(root)
    pafs.copy_files(s3path, str(local), source_filesystem=s3fs, destination_filesystem=pafs.LocalFileSystem())
    out = subprocess.run([sys.executable, str(CHECKER), str(local)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

    # A re-run on the same storage finds every trial in S3 and writes no second version.
    assert run_sweep(load_sweep(path))["skipped"] == 2
    trial_keys = [k for k in objects if k.startswith("sweeps/s3sweep/trials/")]
    assert [versions(s3, k) for k in trial_keys] == [1, 1]
