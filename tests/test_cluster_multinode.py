"""Multi-node sweeps on a Ray cluster simulated on one machine (ray.cluster_utils.Cluster): a head
with no CPUs (as in cluster.yaml, so nothing is scheduled there) and two 1-CPU worker nodes.

- trials land on both workers (each trial reports the Ray node id it ran on);
- a generator needed by trials on both nodes is trained once (phase 0), and when two tasks on
  different nodes ask for one that is not trained yet, the sweep's Ray lock lets one train it
  (counted by a wrapper around the training function, with an unlocked control that does train
  twice, so the count can tell);
- a worker node removed while its trial runs: the trial is retried on the other node and every
  trial is recorded exactly once.
Tiny configs (digits, small_cnn width 4, 3 epochs) keep each test well under two minutes.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from git_ray.results import read_tables
from git_ray.sweep.spec import load_sweep

from tiny_configs import TINY_BASE, TINY_GEN, sweep_file  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1, resources={f"worker{i}": 1}) for i in (1, 2)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="ERROR")
    yield c, workers
    ray.shutdown()
    c.shutdown()




def node_recorder():
    """A Tune callback keeping, per trial, every node id it reported from and its start times."""
    from ray import tune

    class Nodes(tune.Callback):
        def __init__(self):
            self.nodes: dict[str, list[str]] = {}
            self.started: list[float] = []
            self.recovered = 0
            self.recovered_ids: set[str] = set()
            self.first_epoch_node: str | None = None  # (no threading.Event: callbacks are pickled)
            self.first_epoch_trial: str | None = None

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.append(time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.nodes.setdefault(trial.trial_id, []).append(result["node_id"])
            if result.get("epoch") == 1 and self.first_epoch_node is None:
                self.first_epoch_trial = trial.trial_id
                self.first_epoch_node = result["node_id"]

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.recovered += 1
            self.recovered_ids.add(trial.trial_id)

    return Nodes()


def test_trials_spread_over_nodes_and_share_one_generator(tmp_path, cluster, monkeypatch):
    from git_ray.sweep.runner import run_sweep

    c, workers = cluster
    base = {**TINY_BASE, "augment": {"git": True, "git_start": "start", "gen_frac": 0.5}, "generator": TINY_GEN}
    # A relative storage, as in the shipped sweep files: the driver resolves it against its own
    # working directory (trials run inside Ray Tune's trial folders, elsewhere).
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path, "spread", base=base, grid={"seed": [0, 1]}, storage="results")
    cache = tmp_path / "results" / "generators"
    seen: list[tuple[int, int]] = []

    class GeneratorFile(node_recorder().__class__):
        def on_trial_start(self, iteration, trials, trial, **info):
            super().on_trial_start(iteration, trials, trial, **info)
            gen = next(cache.glob("*/generator.pt"))  # phase 0 has finished before any trial
            seen.append((gen.stat().st_ino, gen.stat().st_mtime_ns))

    rec = GeneratorFile()
    counts = run_sweep(load_sweep(path), address=c.address, extra_callbacks=[rec])
    assert counts == {"planned": 2, "finished": 2, "skipped": 0, "stopped": 0, "failed": 0,
                      "missing": 0, "interrupted": 0}

    final_nodes = {ids[-1] for ids in rec.nodes.values()}
    assert len(final_nodes) == 2  # one trial on each worker node
    assert final_nodes <= {w.node_id for w in workers}  # and none on the CPU-less head

    folders = [d for d in cache.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]
    assert len(folders) == 1  # two trials on two nodes, one generator
    gen = folders[0] / "generator.pt"
    # Written once by phase 0: the same file (inode, mtime) at every trial's start and after all.
    assert set(seen) == {(gen.stat().st_ino, gen.stat().st_mtime_ns)} and len(seen) == 2
    trials = read_tables(str(tmp_path / "results" / "spread"))["trials"]
    assert len(trials) == 2 and trials["augment_git"].all()


def counting_task():
    """The task function, made here so that Ray pickles it by value (workers cannot import the
    test module)."""

    def _get_generator_counting(cache: str, count_file: str, barrier_dir: str, use_lock: bool) -> str:
        """Runs as a Ray task: wait until both tasks are up, then ask for a generator; every training
        run appends this node's id to `count_file`."""
        import ray

        from git_ray.config import DatasetConfig, GeneratorConfig
        from git_ray.data import build_dataset
        from git_ray.generative import cache as gcache
        from git_ray.sweep.worker import ray_lock

        node = ray.get_runtime_context().get_node_id()
        real_train = gcache.train_munit

        def counting(*args, **kw):
            with open(count_file, "a") as f:
                f.write(node + "\n")
            time.sleep(1.0)  # widen the window in which a second, unlocked trainer would start too
            return real_train(*args, **kw)

        gcache.train_munit = counting
        data = build_dataset(DatasetConfig(**TINY_BASE["dataset"]))
        Path(barrier_dir, node).touch()
        deadline = time.time() + 60
        while len(os.listdir(barrier_dir)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        lock = ray_lock if use_lock else (lambda key: __import__("contextlib").nullcontext())
        gcache.get_generator(data, GeneratorConfig(**TINY_GEN), cache=cache, device="cpu",
                             lock_factory=lock, log=lambda m: None)
        return node

    return _get_generator_counting


@pytest.mark.parametrize("use_lock", [True, False], ids=["ray_lock", "no_lock_control"])
def test_generator_lock_across_nodes(tmp_path, cluster, use_lock):
    import ray

    from git_ray.sweep.worker import LOCK_ACTOR, LockTable

    locks = ray.remote(num_cpus=0)(LockTable).options(name=LOCK_ACTOR, get_if_exists=True).remote()
    task = ray.remote(num_cpus=1)(counting_task())
    cache, count, barrier = tmp_path / "gens", tmp_path / "trainings.txt", tmp_path / "barrier"
    barrier.mkdir()
    refs = [task.options(resources={f"worker{i}": 1}).remote(str(cache), str(count), str(barrier), use_lock)
            for i in (1, 2)]
    nodes = ray.get(refs, timeout=120)
    ray.kill(locks)
    assert len(set(nodes)) == 2  # the two requests came from two nodes
    trainings = count.read_text().split()
    if use_lock:
        assert len(trainings) == 1  # one trained, the other waited on the lock and loaded it
    else:
        assert len(trainings) == 2  # the control: without the lock both train
    assert len([d for d in cache.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]) == 1


EPOCHS = 80  # seconds of training: the node dies while the trial that reported epoch 1 still trains


def test_removed_node_trials_retried_elsewhere_recorded_once(tmp_path, cluster):
    """Runs last: it removes worker node 1 (or 2) from the module's cluster."""
    from git_ray.sweep.runner import run_sweep

    c, workers = cluster
    # progress_every_s 0: every epoch row reaches Tune, so each trial is seen on its node early
    path = sweep_file(tmp_path, "failover", max_failures=2, grid={"seed": [0, 1, 2]}, progress_every_s=0,
                      base={**TINY_BASE, "train": {**TINY_BASE["train"], "epochs": EPOCHS}})
    rec = node_recorder()
    removed: list[str] = []

    def remove_on_first_epoch():
        deadline = time.time() + 120
        while rec.first_epoch_node is None and time.time() < deadline:
            time.sleep(0.05)
        if rec.first_epoch_node is not None:
            victim = next(w for w in workers if w.node_id == rec.first_epoch_node)
            removed.append(victim.node_id)
            c.remove_node(victim, allow_graceful=False)  # as if the machine died

    killer = threading.Thread(target=remove_on_first_epoch, daemon=True)
    killer.start()
    counts = run_sweep(load_sweep(path), address=c.address, extra_callbacks=[rec])
    killer.join(timeout=5)

    assert removed, "no trial reported a first epoch"
    assert counts["finished"] == 3 and counts["failed"] == 0
    assert rec.recovered >= 1  # the trial on the removed node failed and was retried
    # every trial cut short on the removed node finished on the other one (a trial that had
    # already finished there before the node died is fine as it is)
    # the trial that was training on the removed node was retried and finished on the other one
    assert rec.first_epoch_trial in rec.recovered_ids
    cut = rec.nodes[rec.first_epoch_trial]
    assert cut[0] == removed[0] and cut[-1] != removed[0]
    # and so did any other trial the node took with it (one may have started there and died
    # before its first report; a trial that had finished there before is fine as it is)
    assert all(rec.nodes[tid][-1] != removed[0] for tid in rec.recovered_ids)
    t = read_tables(str(tmp_path / "results" / "failover"))
    assert sorted(t["trials"]["seed"]) == [0, 1, 2] and not t["trials"]["trial_id"].duplicated().any()
    assert len(t["epochs"]) == 3 * EPOCHS and not t["epochs"].duplicated(["trial_id", "epoch"]).any()
    assert len(t["per_class"]) == 3 * 10
