"""End-to-end local Ray sweeps on tiny digits configs: results, re-runs, failures and retries,
Optuna with a persistent study, a generator shared by several trials, and a killed-then-resumed
driver. One Ray instance serves the in-process tests; the resume test drives its own."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from git_ray.results import read_tables
from git_ray.sweep.spec import load_sweep


from tiny_configs import CHECKER, TINY_BASE, TINY_GEN, sweep_file  # noqa: E402




def run(path: Path, **kw):
    from git_ray.sweep.runner import run_sweep

    return run_sweep(load_sweep(path), **kw)


def check_contract(root: Path) -> None:
    out = subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_trial_sweep_writes_results_and_reruns_skip(tmp_path, ray_local):
    path = sweep_file(tmp_path, "two", grid={"seed": [0, 1]})
    counts = run(path)
    assert counts == {"planned": 2, "finished": 2, "skipped": 0, "stopped": 0, "failed": 0,
                      "missing": 0, "interrupted": 0}
    # Of Tune's own loggers only the JSON one runs: Tune reads result.json back for its result
    # grid (without it, it logs "Could not fetch metrics" for every trial)
    tune_dir = tmp_path / "results" / "two" / "_tune"
    assert len(list(tune_dir.glob("run-*/*/result.json"))) == 2
    assert not list(tune_dir.rglob("events.out.tfevents*")) and not list(tune_dir.rglob("progress.csv"))
    root = tmp_path / "results" / "two"
    check_contract(root)
    t = read_tables(str(root))
    assert sorted(t["trials"]["seed"]) == [0, 1]
    assert len(t["epochs"]) == 2 * 3 and len(t["per_class"]) == 2 * 10
    assert (root / "sweep.yaml").is_file() and (root / "environment.json").is_file()
    assert "ray" in (root / "environment.json").read_text()
    assert not (root / "_driver.json").exists()  # the driver's lease is given back
    # the same sweep again on the same storage runs nothing (no Tuner) and duplicates nothing
    again = run(path)
    assert again["skipped"] == 2 and again["finished"] == 0 and again["missing"] == 0
    assert len(list(tune_dir.glob("run-*"))) == 1
    assert len(read_tables(str(root))["trials"]) == 2


def test_failing_trial_is_retried_then_recorded(tmp_path, ray_local):
    from ray import tune

    class Recoveries(tune.Callback):
        n = 0

        def on_trial_recover(self, iteration, trials, trial, **info):
            Recoveries.n += 1

    # lr 1e9 makes the loss NaN within an epoch: the trial must say so and fail
    path = sweep_file(tmp_path, "fails", max_failures=1, grid={"train.lr": [0.05, 1.0e9]})
    counts = run(path, extra_callbacks=[Recoveries()])
    assert counts["finished"] == 1 and counts["failed"] == 1 and counts["missing"] == 0
    assert Recoveries.n == 1  # retried once before being recorded
    t = read_tables(str(tmp_path / "results" / "fails"))
    assert len(t["trials"]) == 1 and t["trials"]["train_lr"].iloc[0] == 0.05
    failed = t["failed"]
    assert len(failed) == 1 and failed["attempts"].iloc[0] == 2
    assert "NonFiniteLossError" in failed["error"].iloc[0] and "lower train.lr" in failed["error"].iloc[0]


def test_optuna_search_study_is_persistent(tmp_path, ray_local):
    from git_ray.sweep.optuna_storage import load_study

    path = sweep_file(tmp_path, "opt", search={
        "algorithm": "optuna", "metric": "balanced_accuracy", "mode": "max", "num_samples": 3,
        "space": {"train.lr": {"loguniform": [0.01, 0.2]}, "balance.loss": {"choice": ["ce", "focal"]}}})
    spec = load_sweep(path)
    counts = run(path)
    assert counts["finished"] == 3
    study = load_study(spec.study_storage, "opt")  # reopened from its SQLite file
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 3
    assert all(0.01 <= t.params["train.lr"] <= 0.2 for t in done)
    trials = read_tables(str(tmp_path / "results" / "opt"))["trials"]
    assert sorted(trials["train_lr"].round(8)) == sorted(round(t.params["train.lr"], 8) for t in done)


def test_generator_trained_once_for_several_trials(tmp_path, ray_local):
    base = {**TINY_BASE, "augment": {"git": True, "git_start": "start", "gen_frac": 0.5}, "generator": TINY_GEN}
    path = sweep_file(tmp_path, "gen", base=base, grid={"seed": [0, 1, 2]})
    counts = run(path)
    assert counts["finished"] == 3
    cache = tmp_path / "results" / "generators"
    fingerprints = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]
    assert len(fingerprints) == 1  # three trials, one generator
    assert (fingerprints[0] / "generator.pt").is_file()
    trials = read_tables(str(tmp_path / "results" / "gen"))["trials"]
    assert trials["augment_git"].all() and len(trials) == 3


# Slow-marked to keep `make test` under 10 minutes on 2 cores: the default run covers the same
# fault (a SIGKILLed driver mid trials, the re-run records each trial once) in
# tests/test_faults.py::test_driver_killed_in_phase0_and_mid_trials_second_driver_truncated_files.
@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tmp_path):
    # 40-epoch trials: on an idle machine 3-epoch ones all finished between two polls
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 40, "s1": 30, "s2": 35}}
    path = sweep_file(tmp_path, "resume", base=base, max_concurrent_trials=1, lease_s=2,
                      grid={"seed": [0, 1, 2, 3]})
    root = tmp_path / "results" / "resume"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "git_ray.cli", "sweep", str(path), "--num-cpus", "1"]
    log = tmp_path / "first_driver.log"  # its output, for the message if it does not die midway
    with open(log, "w") as sink:
        driver = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((root / "trials").rglob("*.parquet"))) < 1:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started die at once
    driver.wait()
    done_before = len(list((root / "trials").rglob("*.parquet")))
    assert 1 <= done_before < 4, f"the driver should die midway; {done_before} done:\n{log.read_text()[-3000:]}"
    time.sleep(2.5)  # the dead driver's lease (lease_s: 2) expires
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming" in out.stdout
    t = read_tables(str(root))
    assert sorted(t["trials"]["seed"]) == [0, 1, 2, 3]  # every trial exactly once
    assert not t["trials"]["trial_id"].duplicated().any()
    check_contract(root)


def test_asha_stopped_trials_have_rows_and_are_pruned_in_optuna(tmp_path, ray_local):
    from git_ray.sweep.optuna_storage import load_study

    # lr from 1e-4 (learns nothing in 4 epochs) to 0.2: ASHA (grace 1, halving) stops the poor ones
    path = sweep_file(tmp_path, "asha", base={**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": 4, "s1": 2, "s2": 3}},
                      search={"algorithm": "optuna", "metric": "balanced_accuracy", "mode": "max",
                              "num_samples": 5, "scheduler": "asha", "grace_period": 1, "reduction_factor": 2,
                              "space": {"train.lr": {"loguniform": [1.0e-4, 0.2]}}})
    counts = run(path)
    root = tmp_path / "results" / "asha"
    t = read_tables(str(root))
    trials, epochs = t["trials"], t["epochs"]
    assert len(trials) == 5 and counts["missing"] == 0 and counts["failed"] == 0
    stopped = trials[trials["status"] == "stopped"]
    assert len(stopped) >= 1 and counts["stopped"] == len(stopped)
    assert counts["finished"] + counts["stopped"] == 5
    n_epochs = epochs.groupby("trial_id").size()
    for tid in stopped["trial_id"]:  # stopped after its last reported epoch, evaluated as it stood
        assert n_epochs[tid] < 4
        row = stopped[stopped["trial_id"] == tid].iloc[0]
        assert 0 <= row["accuracy"] <= 1 and row["ekld_mean"] >= 0
    assert len(t["per_class"]) == 5 * 10
    study = load_study(load_sweep(path).study_storage, "asha")
    states = [s.state.name for s in study.trials]
    assert states.count("PRUNED") == len(stopped) and states.count("COMPLETE") == 5 - len(stopped)


def test_optuna_rerun_settles_stale_trials_and_runs_only_the_rest(tmp_path, ray_local):
    import optuna

    from git_ray.sweep.optuna_storage import load_study, open_storage

    search = {"algorithm": "optuna", "num_samples": 2, "space": {"train.lr": {"loguniform": [0.01, 0.2]}}}
    path = sweep_file(tmp_path, "optre", search=search)
    spec = load_sweep(path)
    assert run(path)["finished"] == 2
    study = optuna.load_study(study_name="optre", storage=open_storage(spec.study_storage))
    study.ask({"train.lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True)})  # a dead driver's
    path = sweep_file(tmp_path, "optre", search={**search, "num_samples": 3})
    counts = run(path)
    assert counts == {"planned": 3, "finished": 1, "skipped": 2, "stopped": 0, "failed": 0,
                      "missing": 0, "interrupted": 0}
    states = sorted(s.state.name for s in load_study(spec.study_storage, "optre").trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert len(read_tables(str(tmp_path / "results" / "optre"))["trials"]) == 3


def test_ray_lock_of_a_killed_holder_is_taken_over_after_its_lease(ray_local):
    import ray

    from git_ray.sweep.worker import LOCK_ACTOR, LockTable, ray_lock

    table = ray.remote(num_cpus=0)(LockTable).options(name=LOCK_ACTOR, get_if_exists=True).remote()
    key = f"gen-{os.getpid()}-{time.time()}"

    @ray.remote(num_cpus=0, max_retries=0)
    def hold(k: str) -> None:
        with ray_lock(k, lease_s=1.5, log=lambda m: None):
            time.sleep(600)

    @ray.remote(num_cpus=0)
    def take(k: str) -> tuple[float, list[str]]:
        logs: list[str] = []
        with ray_lock(k, lease_s=1.5, poll_s=0.1, log=logs.append):
            return time.time(), logs

    holder = hold.remote(key)
    deadline = time.time() + 60
    while ray.get(table.acquire.remote(key, "probe", "test", 1.5))[0] != "held":
        assert time.time() < deadline, "the holder never took the lock"
        ray.get(table.release.remote(key, "probe"))
        time.sleep(0.2)
    taker = take.remote(key)
    time.sleep(3.0)  # longer than the lease: only the holder's renewals keep it from the taker
    assert ray.get(table.acquire.remote(key, "probe", "test", 1.5))[0] == "held"
    ray.cancel(holder, force=True)  # the holder's worker process dies
    killed = time.time()
    taken_at, logs = ray.get(taker, timeout=60)
    assert taken_at - killed <= 1.5 + 2.0, taken_at - killed
    assert any(m.startswith("waiting for") and "held by" in m for m in logs)
    assert any("took over" in m for m in logs)
