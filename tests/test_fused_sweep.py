"""Fused sweeps (sweep key `fuse`): which grid points train together, and a tiny fused sweep on
local Ray whose members write their own rows, fail alone and are skipped on a re-run."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from git_ray.config import ConfigError
from git_ray.results import read_tables
from git_ray.sweep.spec import DEFAULT_GPU_FUSE, load_sweep

from tiny_configs import TINY_BASE, sweep_file  # noqa: E402

# shared/ beside the checkout (main), or beside the folder of worktrees
ROOT = Path(__file__).parent.parent
CHECKER = next((p for p in (ROOT.parent / "shared" / "tools" / "check_results.py",
                            ROOT.parent.parent / "shared" / "tools" / "check_results.py") if p.is_file()),
               ROOT.parent / "shared" / "tools" / "check_results.py")


def test_fuse_default_follows_the_device_and_searches_stay_alone(tmp_path):
    cpu = load_sweep(sweep_file(tmp_path, "a", grid={"seed": [0, 1]}))
    assert cpu.fuse is None and cpu.fuse_size == 1
    gpu = load_sweep(sweep_file(tmp_path, "b", grid={"seed": [0, 1]}, resources_per_trial={"cpu": 1, "gpu": 0.5}))
    assert gpu.fuse_size == DEFAULT_GPU_FUSE
    assert load_sweep(sweep_file(tmp_path, "c", grid={"seed": [0]}, fuse=3)).fuse_size == 3
    with pytest.raises(ConfigError, match="fuse"):
        load_sweep(sweep_file(tmp_path, "d", fuse=4, search={"algorithm": "random", "num_samples": 2,
                                                              "space": {"train.lr": {"loguniform": [0.01, 0.1]}}}))
    with pytest.raises(ConfigError, match="fuse"):
        load_sweep(sweep_file(tmp_path, "e", grid={"seed": [0]}, fuse=0))


def test_groups_share_everything_but_the_member_keys(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, "g", fuse=3, grid={
        "dataset.imbalance_ratio": [10, 20],  # another data shape: another group
        "seed": [0, 1],
        "balance": [{"loss": "ce", "sampler": "none"}, {"loss": "ldam", "sampler": "drs", "reweight": "drw"}],
        "dataset.instance": [0, 1]}))
    groups = spec.fused_groups()
    assert sum(len(g) for g in groups) == spec.num_trials() == 16
    assert sorted(len(g) for g in groups) == [2, 2, 3, 3, 3, 3]  # 8 per ratio, cut at 3
    for g in groups:
        assert len({p["dataset.imbalance_ratio"] for p in g}) == 1
    ids = sorted(spec.trial_config(p).fingerprint() for g in groups for p in g)
    assert ids == sorted(c.fingerprint() for c in spec.trial_configs())  # every point once
    other_arch = load_sweep(sweep_file(tmp_path, "h", fuse=4, grid={"model.arch": ["small_cnn", "resnet20"]}))
    assert [len(g) for g in other_arch.fused_groups()] == [1, 1]


def test_fused_sweep_writes_each_member_and_fails_members_alone(tmp_path, ray_local):
    from git_ray.sweep.runner import run_sweep

    path = sweep_file(tmp_path, "fused", fuse=4, max_failures=0,
                      grid={"seed": [0, 1], "train.lr": [0.05, 1.0e12]})  # lr 1e12: a NaN loss
    spec = load_sweep(path)
    assert [len(g) for g in spec.fused_groups()] == [4]
    counts = run_sweep(spec)
    assert counts == {"planned": 4, "finished": 2, "skipped": 0, "stopped": 0, "failed": 2, "missing": 0,
                      "interrupted": 0}
    root = tmp_path / "results" / "fused"
    out = subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    t = read_tables(str(root))
    assert sorted(t["trials"]["seed"]) == [0, 1] and set(t["trials"]["train_lr"]) == {0.05}
    ids = {spec.trial_config(p).fingerprint() for p in spec.grid_points()}
    assert set(t["trials"]["trial_id"]) | set(t["failed"]["trial_id"]) == ids
    assert set(t["failed"]["train_lr"]) == {1.0e12}
    assert t["failed"]["error"].str.contains("NonFiniteLossError").all()
    assert len(t["epochs"]) == 2 * TINY_BASE["train"]["epochs"] and len(t["per_class"]) == 2 * 10
    # a re-run groups only the members without rows: the failed ones are tried again
    spec = load_sweep(path)
    from git_ray.sweep.runner import take_stock
    points = spec.planned_points()
    todo = [p for p in points if spec.trial_config(p).fingerprint() not in take_stock(spec, points).done]
    assert [len(g) for g in spec.fused_groups(todo)] == [2]
    again = run_sweep(spec)
    assert again == {"planned": 4, "finished": 0, "skipped": 2, "stopped": 0, "failed": 2, "missing": 0,
                     "interrupted": 0}
    assert len(read_tables(str(root))["trials"]) == 2
    assert yaml.safe_load((root / "sweep.yaml").read_text())["fuse"] == 4
