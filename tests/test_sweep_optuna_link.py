"""Optuna searches: every study trial carries its git_ray trial_id, every trials row its Optuna
trial number, and a study kept in a local folder is Optuna's own journal file (what
optuna-dashboard opens)."""
from __future__ import annotations

import optuna
import pytest

from git_ray.results import read_tables
from git_ray.sweep.spec import load_sweep

from tiny_configs import sweep_file


def test_study_trials_and_rows_point_at_each_other(tmp_path, ray_local):
    from git_ray.sweep.optuna_storage import JOURNAL_FILE, load_study
    from git_ray.sweep.runner import run_sweep

    study_dir = tmp_path / "study"
    path = sweep_file(tmp_path, "link", search={
        "algorithm": "optuna", "metric": "balanced_accuracy", "mode": "max", "num_samples": 3,
        "study_storage": str(study_dir),
        "space": {"train.lr": {"loguniform": [0.01, 0.2]}}})
    spec = load_sweep(path)
    assert run_sweep(spec)["finished"] == 3

    # the folder holds Optuna's own journal file, readable without git_ray
    journal = study_dir / JOURNAL_FILE
    assert journal.is_file()
    plain = optuna.load_study(study_name="link", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    done = [t for t in plain.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3

    rows = read_tables(spec.root)["trials"].set_index("trial_id")
    by_attr = {t.user_attrs["git_ray_trial_id"]: t for t in done}
    assert set(by_attr) == set(rows.index)
    for tid, t in by_attr.items():
        assert int(rows.loc[tid, "optuna_trial_number"]) == t.number
        assert rows.loc[tid, "train_lr"] == pytest.approx(t.params["train.lr"])
    assert len(load_study(str(study_dir), "link").trials) == 3  # git_ray's own opener agrees


def test_grid_rows_have_no_optuna_number(tmp_path):
    from git_ray.trial import run_trial

    spec = load_sweep(sweep_file(tmp_path, "plain", grid={"seed": [0]}))
    result = run_trial(spec.trial_configs()[0])
    assert result.trial["optuna_trial_number"] is None
