"""Sweep files: grid expansion, search spaces, and every kind of bad file rejected before Ray."""
from pathlib import Path

import pytest
import yaml

from git_ray.config import ConfigError
from git_ray.sweep.spec import load_sweep

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


def write(tmp_path, data) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "t", "storage": "results", "base": {"dataset": {"source": "digits"}}}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_ready_sweep_is_valid(path):
    spec = load_sweep(path)
    assert spec.num_trials() >= 1


def test_quickstart_grid_expands_and_merges_subconfigs():
    spec = load_sweep(Path(__file__).parent.parent / "sweeps" / "quickstart.yaml")
    cfgs = spec.trial_configs()
    assert len(cfgs) == 24 == spec.num_trials()
    assert len({c.fingerprint() for c in cfgs}) == 24
    ldam = [c for c in cfgs if c.balance.loss == "ldam"]
    assert ldam and all(c.balance.sampler == "drs" and c.balance.reweight == "drw" for c in ldam)
    # a partial sub-config merges into base: the ce/none point keeps base's reweight
    assert all(c.balance.reweight == "none" for c in cfgs if c.balance.loss == "ce")


@pytest.mark.parametrize("patch,needle", [
    ({"grid": {"balance.loss": ["ce", "ldma"]}}, "'ldma' is not a known loss"),
    ({"grid": {"balance.losss": ["ce"]}}, "balance.losss: unknown key"),
    ({"grid": {"seed": []}}, "needs at least one value"),
    ({"base": {"train": {"epochs": -1}}}, "train.epochs"),
    ({"resources_per_trial": {"cpu": 0}}, "resources_per_trial.cpu"),
    ({"resources_per_trial": {"gpu": 1.5}}, "whole number of GPUs"),
    ({"name": "has space"}, "name"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"search": {"algorithm": "optuna", "metric": "balanced_accuracy", "space": {"train.lr": {"loguniform": [0, 1]}}}},
     "loguniform needs a positive low"),
    ({"search": {"algorithm": "optuna", "space": {"train.lr": {"normal": [0, 1]}}}}, "one distribution"),
    ({"search": {"algorithm": "optuna", "space": {"train.lr": {"uniform": [0.5, 0.1]}}}}, "must be below high"),
    ({"search": {"algorithm": "optuna", "metric": "ekld"}}, "not a searchable metric"),
    ({"search": {"algorithm": "grid"}}, "search.algorithm"),
    ({"search": {"algorithm": "optuna", "space": {"train.epochs": {"uniform": [1, 2]}}}}, "train.epochs"),
    ({"search": {"algorithm": "optuna", "space": {"balance.loss": {"choice": ["ce", "nope"]}}}}, "'nope'"),
    ({"grid": {"seed": [0]}, "search": {"algorithm": "optuna", "space": {"train.lr": {"uniform": [0.01, 0.1]}}}},
     "cannot be combined with a grid"),
    ({"grid": {"seed": [0, 0]}}, "repeats an earlier trial"),
])
def test_bad_sweep_files_are_rejected_with_the_key(tmp_path, patch, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, {**BASE, **patch}))
    assert needle in str(err.value)


def test_search_space_and_storage_defaults(tmp_path):
    spec = load_sweep(write(tmp_path, {**BASE, "search": {
        "algorithm": "optuna", "num_samples": 3,
        "space": {"train.lr": {"loguniform": [0.01, 0.3]}, "balance.loss": {"choice": ["ce", "focal"]}}}}))
    assert spec.num_trials() == 3
    assert spec.study_storage.startswith("sqlite:///") and spec.study_storage.endswith("t/optuna.db")
    assert spec.search.tune_metric == "val_balanced_accuracy"  # searches never look at test metrics
    assert load_sweep(write(tmp_path, {**BASE, "storage": "s3://b/p", "search": {"algorithm": "optuna"}})) \
        .study_storage == "s3://b/p/t/optuna-journal"


def test_cli_overrides(tmp_path):
    spec = load_sweep(write(tmp_path, BASE), storage="elsewhere", max_concurrent=3)
    assert spec.root == "elsewhere/t" and spec.max_concurrent_trials == 3


def test_extends_starts_from_another_sweep_file(tmp_path):
    """`extends` (relative to the extending file's folder, chained): base and settings deep-merge,
    grid and search are replaced whole, and the stored sweep.yaml is the resolved file."""
    parent = {**BASE, "name": "parent", "max_concurrent_trials": 3,
              "base": {"dataset": {"source": "digits", "imbalance_ratio": 10}, "train": {"epochs": 3, "s1": 1, "s2": 2}},
              "grid": {"seed": [0, 1, 2], "balance.loss": ["ce", "focal"]}}
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "parent.yaml").write_text(yaml.safe_dump(parent))
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"extends": "studies/parent.yaml", "name": "child",
                                     "base": {"dataset": {"imbalance_ratio": 50}}, "grid": {"seed": [7]}}))
    spec = load_sweep(child)
    assert spec.name == "child" and spec.max_concurrent_trials == 3 and spec.grid == {"seed": [7]}
    (cfg,) = spec.trial_configs()
    assert (cfg.dataset.source, cfg.dataset.imbalance_ratio, cfg.train.epochs, cfg.seed) == ("digits", 50, 3, 7)
    assert "extends" not in yaml.safe_load(spec.to_yaml())
    grandchild = tmp_path / "studies" / "grandchild.yaml"
    grandchild.write_text(yaml.safe_dump({"extends": "../child.yaml", "name": "grandchild",
                                          "search": {"algorithm": "random", "num_samples": 2,
                                                     "space": {"train.lr": {"uniform": [0.01, 0.1]}}}}))
    spec = load_sweep(grandchild)
    assert spec.grid == {"seed": [7]} and spec.num_trials() == 2  # the grid inherited, the search added
    assert {c.dataset.imbalance_ratio for c in spec.trial_configs()} == {50}


@pytest.mark.parametrize("child,needle", [
    ({"extends": "missing.yaml", "name": "c"}, "is no file (the path is relative to the folder"),
    ({"extends": "parent.yaml"}, "needs a name of its own"),
    ({"extends": "parent.yaml", "name": "parent"}, "needs a name of its own"),
    ({"extends": 3, "name": "c"}, "must be the path of another sweep file"),
    ({"extends": "parent.yaml", "name": "c", "grid": {"balance.losss": ["ce"]}}, "balance.losss: unknown key"),
])
def test_bad_extends_is_named(tmp_path, child, needle):
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({**BASE, "name": "parent"}))
    path = tmp_path / "child.yaml"
    path.write_text(yaml.safe_dump(child))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert needle in str(err.value) and (needle.startswith("balance") or "child.yaml" in str(err.value))


def test_extends_loop_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**BASE, "extends": "b.yaml", "name": "a"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**BASE, "extends": "a.yaml", "name": "b"}))
    with pytest.raises(ConfigError, match="leads back to itself"):
        load_sweep(tmp_path / "a.yaml")


def test_the_control_sweep_is_the_study_with_its_own_grid():
    """sweeps/glyphs_git_control_cpu.yaml extends glyphs_git_cpu.yaml: every control trial is a GIT
    trial of the study with git_threshold 1 and nothing else changed."""
    sweeps = Path(__file__).parent.parent / "sweeps"
    study, control = load_sweep(sweeps / "glyphs_git_cpu.yaml"), load_sweep(sweeps / "glyphs_git_control_cpu.yaml")
    assert study.base == control.base and study.resources_per_trial == control.resources_per_trial
    git = {c.model_copy(update={"augment": c.augment.model_copy(update={"git_threshold": 1})}).fingerprint()
           for c in study.trial_configs() if c.augment.git}
    assert git == {c.fingerprint() for c in control.trial_configs()} and len(git) == 12


def test_epoch_reporter_throttles_but_always_sends_the_first_row():
    from git_ray.sweep.worker import epoch_reporter

    now = [0.0]
    sent: list[int] = []
    report = epoch_reporter(lambda row: sent.append(row["epoch"]), every_s=10.0, clock=lambda: now[0])
    for epoch in range(40):  # one epoch every 3 s
        report({"epoch": epoch})
        now[0] += 3.0
    assert sent == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]  # 12 s apart: the first row at or past 10 s
    every = []
    report = epoch_reporter(lambda row: every.append(row["epoch"]), every_s=0.0, clock=lambda: 5.0)
    for epoch in range(5):
        report({"epoch": epoch})
    assert every == list(range(5))  # with a scheduler (every_s 0) each epoch goes to Tune
