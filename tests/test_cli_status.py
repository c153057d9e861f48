"""`--version`, `sweep --dry-run` (no Ray), `status` (counts by group, the driver's heartbeat) and
the progress display (plain lines off a terminal, rich on one, the `_status.json` it writes)."""
from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from git_ray import __version__, storage
from git_ray.cli import main
from git_ray.results import write_trial
from git_ray.sweep.spec import load_sweep
from git_ray.sweep.status import STATUS_FILE, sweep_status

from tiny_configs import sweep_file

ROOT = Path(__file__).parent.parent
GRID = {"dataset.imbalance_ratio": [10, 50], "seed": [0, 1]}


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"git-ray {__version__}"


def test_status_and_dry_run_explain_themselves(capsys):
    for argv in (["status", "--help"], ["sweep", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "_status.json" in out and "--dry-run" in out and "--verbose" in out


def finish_one(spec, point) -> str:
    """Run one tiny trial of the sweep in-process and store it, as a sweep trial would."""
    from git_ray.trial import run_trial

    result = run_trial(spec.trial_config(point))
    write_trial(spec.root, result)
    return result.trial_id


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """A 4-trial sweep with one trial stored and its sweep.yaml beside the results."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = sweep_file(tmp, "demo", grid=GRID)
    spec = load_sweep(path)
    tid = finish_one(spec, spec.grid_points()[0])
    storage.write_bytes(storage.join(spec.root, "sweep.yaml"), spec.to_yaml())
    return path, spec, tid


def test_dry_run_lists_trials_counts_stored_and_starts_no_ray(half_done):
    path, spec, tid = half_done
    code = ("import sys; from git_ray.cli import main; rc = main(['sweep', sys.argv[1], '--dry-run']); "
            "assert 'ray' not in sys.modules, 'dry run imported ray'; sys.exit(rc)")
    before = sorted(p.name for p in Path(spec.root).iterdir())
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    ids = [c.fingerprint() for c in spec.trial_configs()]
    assert all(i in text for i in ids)
    assert "dataset.imbalance_ratio" in text and "seed" in text  # the varying keys head the table
    row = next(line for line in text.splitlines() if line.startswith(tid))
    assert row.split()[-1] == "yes"  # the stored one is marked
    assert "already in storage: 1 of 4; to run: 3" in text
    assert "GIT generators: none" in text
    assert "mean train_seconds of 1 stored trial" in text  # an estimate from the measured trial
    assert sorted(p.name for p in Path(spec.root).iterdir()) == before  # nothing written


def test_dry_run_names_generators_and_whether_cached(tmp_path, capsys):
    from tiny_configs import TINY_BASE, TINY_GEN

    base = {**TINY_BASE, "augment": {"git": True, "git_start": "start"}, "generator": TINY_GEN}
    path = sweep_file(tmp_path, "g", base=base, grid={"dataset.imbalance_ratio": [10, 50], "seed": [0, 1]})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GIT generators: 2 distinct" in out and out.count(": to train") == 2
    assert "no measured trials of this sweep yet" in out


def test_status_counts_by_group_and_by_axis(half_done):
    _, spec, tid = half_done
    text = sweep_status(spec.root, now=0.0)
    assert "done 1, stopped 0, failed 0, missing 3" in text
    assert "no heartbeat" in text
    lines = sweep_status(spec.root, by="dataset.imbalance_ratio").splitlines()
    row10 = next(line for line in lines if line.startswith("10 "))
    row50 = next(line for line in lines if line.startswith("50 "))
    assert row10.split()[1:] == ["1", "0", "0", "1"]  # done running failed missing
    assert row50.split()[1:] == ["0", "0", "0", "2"]


def test_status_command_and_bad_folders(half_done, tmp_path, capsys):
    _, spec, _ = half_done
    assert main(["status", spec.root]) == 0
    assert "missing 3" in capsys.readouterr().out
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["status", str(tmp_path)]) == 2
    assert "no sweep.yaml" in capsys.readouterr().err
    assert main(["status", spec.root, "--by", "balance.nope"]) == 2
    assert "--by 'balance.nope'" in capsys.readouterr().err


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fake_trial(tid: str, config: dict, result: dict | None = None):
    return SimpleNamespace(trial_id=tid, config=config, last_result=result or {})


def test_progress_lines_heartbeat_and_status_while_running(half_done):
    from git_ray.sweep.progress import SweepProgress

    _, spec, tid = half_done
    clock, out = Clock(), io.StringIO()
    prog = SweepProgress(spec, live=False, stream=out, clock=clock, heartbeat_every_s=5)
    points = spec.grid_points()
    a, b = fake_trial("t0", points[1]), fake_trial("t1", points[2])
    prog.on_trial_start(0, [], a)
    clock.t += 1  # a start is written at once, at most once a second
    prog.on_trial_start(0, [], b)
    beat = json.loads(Path(spec.root, STATUS_FILE).read_text())
    running_id = spec.trial_config(points[1]).fingerprint()
    assert beat["state"] == "running" and beat["counts"]["running"] == 2 and beat["counts"]["pending"] == 2
    assert {r["trial_id"] for r in beat["running"]} == {running_id, spec.trial_config(points[2]).fingerprint()}

    clock.t += 19
    text = sweep_status(spec.root, now=clock.t)
    assert "driver: running" in text and "2 active trial(s)" in text and running_id in text
    assert "0:20" in text and "0:19" in text  # running for 20 s and 19 s

    a.last_result = {"test_balanced_accuracy": 0.8123, "ekld_tail": 0.0456, "train_seconds": 20.0, "done": True}
    prog.on_trial_complete(0, [], a)
    assert "finished dataset.imbalance_ratio=10, seed=1: balanced accuracy 0.812, eKLD tail 0.0456" in out.getvalue()
    # 1 running (19 s in) + 2 pending, 20 s each, 2 slots: (3 * 20 - 19) / 2
    assert prog.eta_s() == pytest.approx(20.5)
    assert "1/4 done, 1 running, 2 pending, 0 failed" in prog.summary()
    prog.on_trial_error(0, [], b)
    assert "FAILED dataset.imbalance_ratio=50, seed=0" in out.getvalue()

    clock.t += 3600  # the driver died: its heartbeat goes stale
    assert "driver: not running" in sweep_status(spec.root, now=clock.t)
    prog.on_experiment_end([])
    beat = json.loads(Path(spec.root, STATUS_FILE).read_text())
    assert beat["state"] == "finished" and beat["counts"]["failed"] == 1 and beat["running"] == []
    # Tune pickles its callbacks with the experiment state: the display must survive that
    again = pickle.loads(pickle.dumps(prog))
    assert again.counts == prog.counts


def test_progress_counts_the_members_of_fused_groups(tmp_path):
    from git_ray.sweep.progress import SweepProgress
    from git_ray.sweep.spec import FUSED_KEY

    spec = load_sweep(sweep_file(tmp_path, "fusedprog", grid=GRID, fuse=4))
    clock, out = Clock(), io.StringIO()
    prog = SweepProgress(spec, live=False, stream=out, clock=clock, heartbeat_every_s=5)
    points = spec.grid_points()
    group, lone = fake_trial("t0", {FUSED_KEY: points[:3]}), fake_trial("t1", {FUSED_KEY: points[3:]})
    prog.on_trial_start(0, [], group)
    prog.on_trial_start(0, [], lone)
    assert prog.pending() == 0 and "0/4 done, 2 running, 0 pending" in prog.summary()
    clock.t += 30
    group.last_result = {"done": True, "members": 3, "finished": 1, "skipped": 1, "failed_members": 1}
    prog.on_trial_complete(0, [], group)
    assert "fused group of 3: 1 finished, 1 already in results, 1 failed" in out.getvalue()
    assert prog.counts == {"done": 1, "already": 1, "stopped": 0, "failed": 1}
    assert prog.trial_seconds == [15.0, 15.0]  # 30 s for two members trained: 15 s each
    prog.on_trial_error(0, [], lone)
    assert prog.counts["failed"] == 2 and prog.finished() == 4 and prog.pending() == 0


def test_progress_live_display_draws_with_rich(half_done):
    from git_ray.sweep.progress import SweepProgress

    _, spec, _ = half_done
    out = io.StringIO()
    prog = SweepProgress(spec, live=True, stream=out, heartbeat_every_s=3600)
    t = fake_trial("t0", spec.grid_points()[3])
    prog.on_trial_start(0, [], t)
    t.last_result = {"test_balanced_accuracy": 0.5, "ekld_tail": 0.1, "train_seconds": 1.0, "done": True}
    prog.on_trial_complete(0, [], t)
    prog.on_experiment_end([])
    text = out.getvalue()
    assert "1/4" in text and "balanced accuracy 0.500" in text and "ETA" in text


def test_dry_run_of_a_sweep_meant_for_elsewhere_lists_it_then_exits_2(tmp_path, capsys):
    """Data files missing here: the trials are still listed, then the preflight's message, exit 2."""
    path = sweep_file(tmp_path, "away", grid={"dataset": [{"source": "k49", "root": str(tmp_path / "k49")}],
                                              "seed": [0, 1]})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert "already in storage: 0 of 2; to run: 2" in out
    assert "k49-train-imgs.npz" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


def test_status_during_phase_0(tmp_path):
    from git_ray.sweep.progress import SweepProgress

    path = sweep_file(tmp_path, "p0", grid={"seed": [0, 1]})
    spec = load_sweep(path)
    storage.write_bytes(storage.join(spec.root, "sweep.yaml"), spec.to_yaml())
    clock = Clock()
    SweepProgress(spec, live=False, stream=io.StringIO(), clock=clock).write_heartbeat(phase="generators")
    text = sweep_status(spec.root, now=clock.t + 2)
    assert "phase 0: training the GIT generators" in text and "missing 2" in text


def test_random_search_dry_run_and_status_count_the_drivers_planned_trials(tmp_path, capsys):
    """A random search's trials are drawn from search.seed before it runs: --dry-run and status
    list and count exactly the points the driver plans (repeated draws count once), not the grid."""
    path = sweep_file(tmp_path, "rnd", grid={"seed": [0, 1]}, search={
        "algorithm": "random", "num_samples": 4, "seed": 3,
        "space": {"dataset.imbalance_ratio": {"choice": [10, 50]}}})
    spec = load_sweep(path)
    planned = spec.planned_points()
    assert spec.num_trials() == len(planned) == 4  # 8 draws over 2 seeds x 2 ratios: 4 distinct
    first = planned[0]
    tid = finish_one(spec, first)
    storage.write_bytes(storage.join(spec.root, "sweep.yaml"), spec.to_yaml())

    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(spec.trial_config(p).fingerprint() in out for p in planned)
    assert "dataset.imbalance_ratio" in out  # the search's keys are columns of the table
    assert next(line for line in out.splitlines() if line.startswith(tid)).split()[-1] == "yes"
    assert "already in storage: 1 of 4; to run: 3" in out

    text = sweep_status(spec.root, by="dataset.imbalance_ratio", now=0.0)
    assert "done 1, stopped 0, failed 0, missing 3" in text
    row = next(line for line in text.splitlines() if line.startswith(f"{first['dataset.imbalance_ratio']} "))
    assert row.split()[1] == "1"  # the stored trial is counted in its own group
