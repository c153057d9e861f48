"""cluster.yaml: Ray's own cluster-config validation (the JSON schema `ray up` applies, which
rejects unknown keys, and the checks after the defaults are merged in), plus what git_ray needs
from it: integer node resources, a head with no CPUs, GPU workers that fit the sweep files'
trial shares, and setup commands that install the Ray version the client runs."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from git_ray.sweep.spec import load_sweep

ROOT = Path(__file__).parent.parent
CLUSTER = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_passes_rays_validation_as_written_and_as_ray_up_prepares_it(config):
    validate_config(config)  # the file itself
    validate_config(prepare_config(config))  # after `ray up` merges the AWS defaults


def test_unknown_keys_are_rejected_by_the_same_schema(config):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    bad = {**config, "available_node_types": {**config["available_node_types"],
                                              "head": {**config["available_node_types"]["head"], "gpus": 1}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)  # so the test above would catch a misspelt key


def test_node_resources_are_integers_and_head_runs_no_trials(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    for name, node in types.items():
        for key, value in node["resources"].items():
            assert isinstance(value, int) and not isinstance(value, bool), f"{name}.resources.{key}={value!r}"
    workers = [n for k, n in types.items() if k != config["head_node_type"]]
    assert workers and all(n["resources"].get("GPU", 0) >= 1 and n["min_workers"] == 0 for n in workers)
    assert all(1 <= n["max_workers"] <= config["max_workers"] for n in workers)  # can scale up


GPU_SWEEPS = sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml") if load_sweep(p).resources_per_trial.gpu > 0)


def test_the_paper_sweeps_ask_for_gpu_shares():
    assert {"k49_invariance.yaml", "k49_git.yaml", "cifar10_lt.yaml", "gtsrb_lt.yaml"} <= set(GPU_SWEEPS)


@pytest.mark.parametrize("sweep", GPU_SWEEPS)
def test_gpu_sweeps_fit_a_worker_and_pack_by_their_gpu_share(config, sweep):
    res = load_sweep(ROOT / "sweeps" / sweep).resources_per_trial
    node = config["available_node_types"]["gpu_worker"]["resources"]
    per_node = min(math.floor(node["CPU"] / res.cpu), math.floor(node["GPU"] / res.gpu))
    assert per_node >= 1
    # CPUs must not be what limits packing: a gpu: 0.25 trial should find 3 neighbours
    assert per_node == math.floor(node["GPU"] / res.gpu)


def test_setup_installs_git_ray_and_the_clients_ray_version(config):
    setup = "\n".join(config["setup_commands"])
    pinned = re.search(r'"ray\[([a-z,]+)\]==([0-9.]+)"', setup)
    assert pinned and pinned.group(2) == ray.__version__
    assert {"default", "tune"} <= set(pinned.group(1).split(","))  # `ray job submit` needs default
    assert "~/git_ray" in setup and config["file_mounts"] == {"/home/ubuntu/git_ray": "."}
    assert re.search(r"aws s3 sync .*s3://[^/\s]+/data/k49 ~/data/k49", setup)  # data from the bucket
    image = {n["node_config"]["ImageId"] for n in config["available_node_types"].values()}
    assert len(image) == 1  # one AMI, set in one place (a YAML anchor)
    assert os.path.isfile(ROOT / ".gitignore") and ".gitignore" in config["rsync_filter"]
