"""The `git-ray` command: help, a full `train` on digits, and user mistakes that write nothing."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from git_ray.cli import main
from git_ray.results import read_tables
from git_ray.train.loop import NonFiniteLossError
from tiny_configs import CHECKER

ROOT = Path(__file__).parent.parent
FAST = ["--set", "train.epochs=4", "--set", "train.s1=2", "--set", "train.s2=3",
        "--set", "train.warmup_epochs=1", "--set", "eval.ekld_draws=5"]


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "git_ray.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("train", "sweep", "analyze", "generator"):
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", ["train", "sweep", "analyze", "generator"])
def test_every_subcommand_explains_itself(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 200


def test_train_on_digits_writes_the_contract(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["train", str(ROOT / "configs" / "digits_background.yaml"), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "balanced" in printed and "eKLD head" in printed and str(out) in printed
    check = subprocess.run([sys.executable, str(CHECKER), str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    t = read_tables(str(out))
    row = t["trials"].iloc[0]
    assert (row["dataset_source"], row["dataset_nuisance"], row["train_epochs"]) == ("digits", "background", 4)
    assert len(t["epochs"]) == 4 and len(t["per_class"]) == 10
    # realised class counts are in the output, largest first by rank
    pc = t["per_class"].sort_values("class_rank")
    assert pc["train_count"].is_monotonic_decreasing and pc["train_count"].iloc[0] == 100


def test_same_trial_twice_keeps_one_row(tmp_path, capsys):
    out = tmp_path / "twice"
    for _ in range(2):
        assert main(["train", str(ROOT / "configs" / "digits_rotation.yaml"), "--out", str(out), "--quiet", *FAST]) == 0
    assert len(read_tables(str(out))["trials"]) == 1


def bad_config(tmp_path, data) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("data,needle", [
    ({"balance": {"loss": "ldma"}}, "balance.loss"),
    ({"balance": {"sampler": "oversample"}}, "balance.sampler"),
    ({"balance": {"reweight": "inverse"}}, "balance.reweight"),
    ({"dataset": {"source": "mnist"}}, "dataset.source"),
    ({"dataset": {"nuisance": "blur"}}, "dataset.nuisance"),
    ({"model": {"arch": "resnet18"}}, "model.arch"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"lrate": 0.1}}, "train.lrate: unknown key"),
    ({"dataset": {"source": "k49", "root": "/nonexistent/k49"}}, "k49-train-imgs.npz"),
    ({"dataset": {"source": "cifar10", "root": "/nonexistent/c"}}, "cifar-10-batches-py"),
])
def test_bad_configs_exit_nonzero_and_write_nothing(tmp_path, capsys, data, needle):
    out = tmp_path / "out"
    code = main(["train", bad_config(tmp_path, data), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert not out.exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_trial_that_raises_midway_leaves_no_files(tmp_path, capsys):
    out = tmp_path / "nan"
    code = main(["train", str(ROOT / "configs" / "digits_background.yaml"), "--out", str(out), "--quiet",
                 *FAST, "--set", "train.lr=1e9", "--set", "train.warmup_epochs=0"])
    err = capsys.readouterr().err
    assert code == 1 and "lower train.lr" in err and "no results were written" in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_nan_loss_is_detected_as_such(tmp_path):
    from git_ray.config import load_trial_config
    from git_ray.trial import run_trial

    cfg = load_trial_config(ROOT / "configs" / "digits_background.yaml",
                            [s for s in FAST if s != "--set"] + ["train.lr=1e9", "train.warmup_epochs=0"])
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf).*at epoch \d+, step \d+"):
        run_trial(cfg)


def test_sweep_and_analyze_reject_bad_input_before_work(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "x", "storage": str(tmp_path / "r"),
                                     "grid": {"balance.loss": ["ce", "nope"]}}))
    assert main(["sweep", str(sweep)]) == 2
    assert "'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["analyze", str(tmp_path / "empty")]) == 2
    assert "trials" in capsys.readouterr().err
