"""The fault table: faults injected into a tiny local sweep, then the sweep run again until it
says it is done; per fault, trials lost, trials duplicated, and seconds added over a clean run.

    python -m bench.bench_faults [--trials 4] [--no-generator]

Each scenario runs `git-ray sweep` as a subprocess (its own process group) on a fresh folder:
a clean run gives the baseline wall time; a faulted scenario's time is everything from its
first start to the end of the run that completes the sweep, waits for an expired lease included
(lease_s: 2). "lost" = trials of the sweep without readable rows at the end; "duplicated" = rows
of the trials table beyond one per trial. Times depend on the machine and its load (printed).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

from bench.common import machine_line

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "dataset": {"source": "digits", "nuisance": "background", "imbalance_ratio": 10},
    "model": {"arch": "small_cnn", "width": 4},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "warmup_epochs": 1, "s1": 1, "s2": 2, "threads": 1},
    "eval": {"ekld_images_per_class": 5, "ekld_draws": 4},
}
GIT = {"augment": {"git": True, "git_start": "start", "gen_frac": 0.5},
       "generator": {"steps": 60, "batch_size": 4, "dim": 8, "style_dim": 4, "n_downsample": 1, "n_res": 1,
                     "mlp_dim": 16, "checkpoint_every": 5}}
LEASE_S = 2.0


class Sweep:
    """One sweep folder and the `git-ray sweep` processes started on it."""

    def __init__(self, base: Path, name: str, trials: int, generator: bool):
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.root = self.dir / "results" / name
        self.gens = self.dir / "results" / "generators"
        self.trials = trials
        self.file = self.dir / "sweep.yaml"
        self.file.write_text(yaml.safe_dump({
            "name": name, "storage": str(self.dir / "results"), "resources_per_trial": {"cpu": 1},
            "max_concurrent_trials": 1, "lease_s": LEASE_S, "verbose": 0,
            "base": {**TINY, **(GIT if generator else {})}, "grid": {"seed": list(range(trials))}}))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "git_ray.cli", "sweep", str(self.file), "--num-cpus", "2"],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self) -> int:
        return self.start().wait(timeout=900)

    def rows(self) -> int:
        return len([p for p in (self.root / "trials").rglob("*.parquet") if not p.name.startswith((".", "_"))])

    def wait_for(self, check: Callable[[], bool], proc: subprocess.Popen, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None and not check():
            time.sleep(0.2)

    def kill_all(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def tally(self) -> tuple[int, int]:
        """(trials lost, trials duplicated) as the files say."""
        import pyarrow.dataset as ds

        from git_ray.results import complete_trial_ids

        complete = complete_trial_ids(str(self.root))
        try:
            ids = ds.dataset(str(self.root / "trials"), format="parquet", partitioning="hive") \
                .to_table(columns=["trial_id"]).column("trial_id").to_pylist()
        except Exception:  # an unreadable file left behind counts as a lost trial already
            ids = list(complete)
        return self.trials - len(complete), len(ids) - len(set(ids))


def kill_driver(s: Sweep, when: Callable[[], bool]) -> None:
    proc = s.start()
    s.wait_for(when, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(LEASE_S + 0.5)  # the dead driver's lease expires
    s.run()


def ctrl_c(s: Sweep) -> None:
    proc = s.start()
    s.wait_for(lambda: s.rows() >= 1, proc)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=300)
    s.run()


def second_driver(s: Sweep) -> None:
    first = s.start()
    s.wait_for(lambda: (s.root / "_driver.json").exists(), first)
    s.run()  # refused (exit 2) while the first runs
    first.wait(timeout=900)


def truncated(s: Sweep, table: str) -> None:
    s.run()
    victim = sorted(p for p in (s.root / table).rglob("*.parquet") if not p.name.startswith("."))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    s.run()


def truncated_generator(s: Sweep) -> None:
    """generator.pt and one trials file truncated: the trial to redo needs the generator again."""
    s.run()
    gen = next(s.gens.glob("*/generator.pt"))
    gen.write_bytes(gen.read_bytes()[:100])
    victim = sorted(p for p in (s.root / "trials").rglob("*.parquet") if not p.name.startswith("."))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    s.run()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--no-generator", action="store_true", help="skip the scenarios with a GIT generator")
    p.add_argument("--only", default="", help="run only scenarios whose name contains this (and the baselines)")
    args = p.parse_args(argv)
    print(machine_line())
    print(f"sweep: {args.trials} tiny digits trials, one at a time, local Ray on 2 CPUs, lease_s {LEASE_S:g}")
    scenarios: list[tuple[str, bool, Callable[[Sweep], None]]] = [
        ("none (clean run)", False, lambda s: s.run()),
        ("driver SIGKILL mid-trials, re-run", False, lambda s: kill_driver(s, lambda: s.rows() >= 1)),
        ("Ctrl-C (SIGINT) mid-trials, re-run", False, ctrl_c),
        ("second driver while the first runs", False, second_driver),
        ("truncated trials file, re-run", False, lambda s: truncated(s, "trials")),
        ("truncated per_class file, re-run", False, lambda s: truncated(s, "per_class")),
    ]
    if not args.no_generator:
        scenarios += [
            ("none (clean run, with a generator)", True, lambda s: s.run()),
            ("driver SIGKILL in phase 0, re-run", True,
             lambda s: kill_driver(s, lambda: any(s.gens.glob("*/checkpoint.pt")))),
            ("truncated generator.pt + trials, re-run", True, truncated_generator),
        ]
    scenarios = [sc for sc in scenarios if sc[0].startswith("none") or args.only in sc[0]]
    figures: dict[str, float] = {}
    baseline: dict[bool, float] = {}
    print(f"\n{'fault injected':<40} {'lost':>5} {'duplicated':>11} {'seconds added':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, gen, scenario) in enumerate(scenarios):
            s = Sweep(Path(tmp), f"s{i}", args.trials, gen)
            start = time.perf_counter()
            try:
                scenario(s)
            finally:
                s.kill_all()
            wall = time.perf_counter() - start
            lost, dup = s.tally()
            if name.startswith("none"):
                baseline[gen] = wall
                added = f"({wall:.0f} s run)"
            else:
                added = f"{wall - baseline[gen]:+.0f}"
                figures[f"{name}.seconds_added"] = wall - baseline[gen]
            figures[f"{name}.lost"], figures[f"{name}.duplicated"] = float(lost), float(dup)
            print(f"{name:<40} {lost:>5} {dup:>11} {added:>14}", flush=True)
    return figures


if __name__ == "__main__":
    main()
