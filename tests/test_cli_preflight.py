"""Preflight: every user mistake ends before any work with exit 2, one message naming the key and
the value, no traceback, and nothing written (the folder trees are compared before and after)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from git_ray.cli import main
from git_ray.config import ConfigError

from tiny_configs import TINY_BASE, sweep_file

ROOT = Path(__file__).parent.parent
DIGITS = str(ROOT / "configs" / "digits_background.yaml")
DIGITS_GIT = str(ROOT / "configs" / "digits_git.yaml")
HAS_CUDA = torch.cuda.is_available() and torch.cuda.device_count() > 0


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def fails(argv: list[str], capsys, tmp_path: Path, *needles: str) -> str:
    """Run the command; assert exit 2, the needles in stderr, no traceback, nothing written."""
    before = tree(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    assert tree(tmp_path) == before, "the failed command left files behind"
    return err


def write(tmp_path: Path, name: str, data) -> str:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


# --- output locations ---------------------------------------------------------------------------


def test_train_out_is_a_file(tmp_path, capsys):
    (tmp_path / "A_FILE").write_text("x")
    fails(["train", DIGITS, "--out", str(tmp_path / "A_FILE")], capsys, tmp_path, "--out", "A_FILE", "is a file")
    assert (tmp_path / "A_FILE").read_text() == "x"


def test_train_out_below_a_file(tmp_path, capsys):
    (tmp_path / "A_FILE").write_text("x")
    fails(["train", DIGITS, "--out", str(tmp_path / "A_FILE" / "sub")], capsys, tmp_path,
          "--out", "A_FILE", "cannot be created")


def test_train_out_not_writable(tmp_path, capsys, monkeypatch):
    # Tests run as root here, where every folder is writable: make this one report otherwise.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    fails(["train", DIGITS, "--out", str(locked / "out")], capsys, tmp_path, "--out", "locked", "not writable")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_train_out_where_nothing_can_be_created(tmp_path, capsys):
    # /proc passes every permission check for root yet refuses new entries: the probe finds it
    # before the trial trains (it used to train, then fail on the write with a traceback).
    fails(["train", DIGITS, "--out", "/proc/git_ray_out"], capsys, tmp_path, "--out", "/proc",
          "cannot create anything")


def test_writable_probe_leaves_nothing_behind(tmp_path):
    from git_ray.preflight import check_writable

    check_writable(str(tmp_path / "new" / "deeper"), "--out")  # probes in tmp_path, the part that exists
    (tmp_path / "there").mkdir()
    check_writable(str(tmp_path / "there"), "--out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["there"]


def test_train_generator_cache_is_a_file(tmp_path, capsys):
    # A GIT trial's generator.cache is checked like --out (it used to fail on its first write)
    (tmp_path / "cache").write_text("x")
    fails(["train", DIGITS_GIT, "--out", str(tmp_path / "out"), "--set", f"generator.cache={tmp_path / 'cache'}"],
          capsys, tmp_path, "generator.cache", "is a file")


def test_generator_out_is_a_file(tmp_path, capsys):
    (tmp_path / "gen").write_text("x")
    fails(["generator", DIGITS_GIT, "--out", str(tmp_path / "gen")], capsys, tmp_path, "--out", "is a file")


def test_sweep_storage_is_a_file(tmp_path, capsys):
    (tmp_path / "store").write_text("x")
    path = sweep_file(tmp_path, "s", grid={"seed": [0, 1]}, storage=str(tmp_path / "store"))
    fails(["sweep", str(path)], capsys, tmp_path, "storage", "store", "is a file")


def test_analyze_results_missing_and_out_a_file(tmp_path, capsys):
    fails(["analyze", str(tmp_path / "none")], capsys, tmp_path, "none", "no such folder")
    # a folder that holds results, but --out is a file
    from git_ray.results import build_result, write_trial  # noqa: F401  (results need a trial: use train)
    res = tmp_path / "res"
    assert main(["train", DIGITS, "--out", str(res), "--quiet", "--set", "train.epochs=2", "--set", "train.s1=1",
                 "--set", "train.s2=2", "--set", "train.warmup_epochs=0", "--set", "eval.ekld_draws=2",
                 "--set", "eval.ekld_images_per_class=2"]) == 0
    capsys.readouterr()
    (tmp_path / "report").write_text("x")
    fails(["analyze", str(res), "--out", str(tmp_path / "report")], capsys, tmp_path, "--out", "report", "is a file")


# --- devices and cluster resources --------------------------------------------------------------


@pytest.mark.parametrize("device,needle", [("tpu", "is not a device"),
                                           ("cuda:99" if HAS_CUDA else "cuda", "CUDA GPU")])
def test_train_bad_device(tmp_path, capsys, device, needle):
    fails(["train", DIGITS, "--out", str(tmp_path / "o"), "--device", device], capsys, tmp_path,
          "--device", repr(device), needle)


def test_generator_bad_device(tmp_path, capsys):
    fails(["generator", DIGITS_GIT, "--out", str(tmp_path / "g"), "--device", "gpu0"], capsys, tmp_path,
          "--device", "'gpu0'")


def test_config_device_cuda_without_gpu(tmp_path, capsys):
    if HAS_CUDA:
        pytest.skip("this machine has a GPU: train.device cuda is valid here")  # covered by --device cuda:99
    fails(["train", DIGITS, "--out", str(tmp_path / "o"), "--set", "train.device=cuda"], capsys, tmp_path,
          "train.device", "'cuda'", "no CUDA GPU")


def test_sweep_num_cpus_zero(tmp_path, capsys):
    path = sweep_file(tmp_path, "s", grid={"seed": [0]})
    fails(["sweep", str(path), "--num-cpus", "0"], capsys, tmp_path, "--num-cpus 0", "at least 1")


def test_sweep_asks_for_gpus_this_machine_lacks(tmp_path, capsys):
    gpu = 64 if HAS_CUDA else 0.25
    path = sweep_file(tmp_path, "s", grid={"seed": [0]}, resources_per_trial={"cpu": 1, "gpu": gpu})
    err = fails(["sweep", str(path)], capsys, tmp_path, f"trials ask for gpu {gpu:g}", "resources_per_trial.gpu")
    if not HAS_CUDA:
        assert "has 0 GPUs: set resources_per_trial.gpu: 0, or run on a GPU cluster" in err


def test_sweep_asks_for_more_cpus_than_num_cpus(tmp_path, capsys):
    path = sweep_file(tmp_path, "s", grid={"seed": [0]}, resources_per_trial={"cpu": 4})
    fails(["sweep", str(path), "--num-cpus", "2"], capsys, tmp_path, "trials ask for cpu 4",
          "resources_per_trial.cpu: 2")


def test_trials_fit_a_node_type_the_autoscaler_may_start(tmp_path):
    from git_ray.sweep.resources import autoscaler_node_types, check_trials_fit

    head_only = [{"CPU": 2.0}]
    with pytest.raises(ConfigError, match="trials ask for gpu 0.25; this Ray cluster has 0 GPUs"):
        check_trials_fit({"cpu": 1, "gpu": 0.25}, head_only, where="this Ray cluster")
    cfg = tmp_path / "ray_bootstrap_config.yaml"
    cfg.write_text(yaml.safe_dump({"available_node_types": {
        "head": {"resources": {"CPU": 2}, "max_workers": 0, "node_config": {}},
        "gpu_worker": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 4, "node_config": {}}}}))
    types = autoscaler_node_types(cfg)
    assert types == [{"CPU": 8, "GPU": 1}]
    check_trials_fit({"cpu": 1, "gpu": 0.25}, head_only, where="this Ray cluster", node_types=types)
    with pytest.raises(ConfigError, match="trials ask for gpu 2; .* at most 1 GPUs"):
        check_trials_fit({"cpu": 1, "gpu": 2}, head_only, where="this Ray cluster", node_types=types)


def test_address_auto_without_a_cluster(tmp_path, capsys, monkeypatch):
    """`--address auto` with no running Ray: exit 2 with a clear message. Ray's own lookup also
    finds any Ray process on the machine (other test runs share it), so `ray.init` answers here
    as it does when it finds none (measured: ConnectionError, "Could not find any running Ray
    instance. ...", within 0.4 s)."""
    import ray

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect "
                              "to by setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(ray, "init", no_cluster)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    path = sweep_file(tmp_path, "s", grid={"seed": [0]})
    err = fails(["sweep", str(path), "--address", "auto"], capsys, tmp_path, "--address auto", "no Ray cluster",
                "ray start --head")
    assert "Could not find any running Ray instance" in err


# --- data files ---------------------------------------------------------------------------------


def test_sweep_checks_every_distinct_dataset(tmp_path, capsys):
    """One grid value points at a K49 folder without files: caught before Ray, naming the file."""
    path = sweep_file(tmp_path, "s", grid={"dataset": [{"source": "digits"},
                                                       {"source": "k49", "root": str(tmp_path / "k49")}]})
    (tmp_path / "k49").mkdir()
    fails(["sweep", str(path)], capsys, tmp_path, "dataset.root", "k49-train-imgs.npz")


def test_source_file_checks_read_nothing(tmp_path):
    from git_ray.data.sources import check_source_files, native_size

    check_source_files("digits", None)  # needs no files: no check
    (tmp_path / "cifar-10-batches-py").mkdir()
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (tmp_path / "cifar-10-batches-py" / f).write_bytes(b"not a pickle")  # present is enough
    check_source_files("cifar10", str(tmp_path))
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ConfigError, match="test_batch"):
        check_source_files("cifar10", str(tmp_path))
    assert (native_size("digits"), native_size("k49"), native_size("cifar10")) == (16, 28, 32)
    assert native_size("no-such-source") is None


# --- cross-field rules and types ----------------------------------------------------------------


@pytest.mark.parametrize("sets,needles", [
    (["train.epochs=true"], ["train.epochs", "boolean True"]),
    (["train.lr=false"], ["train.lr", "boolean False"]),
    (["dataset.imbalance_ratio=true"], ["dataset.imbalance_ratio", "boolean"]),
    (["train.s1=70", "train.s2=80"], ["s2 (80)", "epochs 60", "train.s2"]),
    (["train.s1=55", "train.s2=50"], ["s1 (55)", "s2 (50)"]),
])
def test_train_rejects_bad_fields(tmp_path, capsys, sets, needles):
    argv = ["train", DIGITS, "--out", str(tmp_path / "o")]
    for s in sets:
        argv += ["--set", s]
    fails(argv, capsys, tmp_path, *needles)


def test_git_start_after_the_last_epoch(tmp_path, capsys):
    fails(["train", DIGITS_GIT, "--out", str(tmp_path / "o"), "--set", "train.s1=60", "--set", "train.s2=60"],
          capsys, tmp_path, "augment.git_start", "train.s1 (60)", "train.epochs 60")


def test_n_downsample_too_many_for_16px(tmp_path, capsys):
    fails(["generator", DIGITS_GIT, "--out", str(tmp_path / "g"), "--set", "generator.n_downsample=4"],
          capsys, tmp_path, "generator.n_downsample 4", "16-px", "at most 3")


def test_n_downsample_checked_by_the_generator_command_without_git(tmp_path, capsys):
    fails(["generator", DIGITS, "--out", str(tmp_path / "g"), "--set", "generator.n_downsample=4"],
          capsys, tmp_path, "digits_background.yaml", "generator.n_downsample 4", "16-px")


def test_n_downsample_rule_matches_the_network():
    """The config's rule and MUNIT's own check agree at the boundary, for several sizes."""
    from git_ray.config import trial_config
    from git_ray.generative.networks import Munit

    for size in (8, 16, 28, 32):
        for n in range(5):
            data = {"dataset": {"image_size": size}, "augment": {"git": True},
                    "generator": {"n_downsample": n}}
            try:
                trial_config(data)
                ok = True
            except ConfigError:
                ok = False
            try:
                Munit(in_channels=1, image_size=size, dim=4, n_downsample=n, n_res=0, mlp_dim=8)
                net_ok = True
            except ValueError:
                net_ok = False
            assert ok == net_ok, (size, n)


def test_empty_config_file(tmp_path, capsys):
    fails(["train", write(tmp_path, "empty.yaml", ""), "--out", str(tmp_path / "o")], capsys, tmp_path,
          "empty.yaml", "empty")


def test_empty_sweep_file(tmp_path, capsys):
    fails(["sweep", write(tmp_path, "empty.yaml", "\n")], capsys, tmp_path, "empty.yaml")


def test_bool_in_sweep_resources(tmp_path, capsys):
    path = sweep_file(tmp_path, "s", grid={"seed": [0]}, resources_per_trial={"cpu": True})
    fails(["sweep", str(path)], capsys, tmp_path, "resources_per_trial.cpu", "boolean")


def test_booleans_still_accepted_where_booleans_belong(tmp_path):
    from git_ray.config import trial_config

    cfg = trial_config({**TINY_BASE, "augment": {"oracle": True, "flip": False}})
    assert cfg.augment.oracle is True and cfg.augment.flip is False


# --- object stores ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_bucket():
    """A moto S3 server on loopback with one bucket; the AWS_* variables point at it."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        client = boto3.client("s3")
        client.create_bucket(Bucket="preflight")
        yield client
    server.stop()


def test_s3_storage_in_a_missing_bucket(tmp_path, capsys, s3_bucket):
    path = sweep_file(tmp_path, "s", grid={"seed": [0]}, storage="s3://no-such-bucket/git_ray")
    fails(["sweep", str(path), "--dry-run"], capsys, tmp_path, "storage", "s3://no-such-bucket/git_ray",
          "bucket 'no-such-bucket' does not exist")


def test_s3_storage_probe_leaves_nothing(tmp_path, capsys, s3_bucket):
    from git_ray.preflight import check_writable

    check_writable("s3://preflight/sweeps", "storage")  # writes and deletes a probe object
    listed = s3_bucket.list_objects_v2(Bucket="preflight").get("Contents", [])
    assert [o["Key"] for o in listed if not o["Key"].endswith("/")] == []
    path = sweep_file(tmp_path, "s", grid={"seed": [0]}, storage="s3://preflight/sweeps")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "already in storage: 0 of 1" in capsys.readouterr().out


def test_joined_cluster_is_judged_by_its_nodes():
    """With --address, the check runs right after connecting, on ray.nodes(); the driver leaves
    the cluster (which stays up) when the trials cannot fit."""
    import ray
    from ray.cluster_utils import Cluster

    from git_ray.sweep.runner import init_ray

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        with pytest.raises(ConfigError, match=r"trials ask for gpu 0.25; this Ray cluster has 0 GPUs: "
                                              r"set resources_per_trial.gpu: 0"):
            init_ray(cluster.address, None, {"cpu": 1, "gpu": 0.25})
        assert not ray.is_initialized()
        init_ray(cluster.address, None, {"cpu": 1, "gpu": 0})  # fits: stays connected
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        cluster.shutdown()
