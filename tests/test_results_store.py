"""Results: schema derived from the config, atomic per-trial Parquet files, readers agree."""
from __future__ import annotations

import datetime as dt
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from git_ray.config import TrialConfig, trial_config
from git_ray.results import (
    CONFIG_COLUMNS, SCHEMAS, TRIAL_METRICS, SchemaError, TrialResult, build_result, head_tail_mean,
    read_table, read_tables, read_trial, trial_exists, write_failure, write_trial,
)
from git_ray.results import store

CHECKER = Path("/work/shared/tools/check_results.py")


def make_cfg(**sections) -> TrialConfig:
    base = {"dataset": {"source": "digits", "nuisance": "background", "imbalance_ratio": 20.0},
            "train": {"epochs": 3, "s1": 2, "s2": 2, "warmup_epochs": 1}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return trial_config(base)


def make_result(cfg: TrialConfig, seed: int = 0, num_classes: int = 10) -> TrialResult:
    """Rows shaped like a real trial's: zipf-like class sizes, eKLD falling with size."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, (200 / (np.arange(num_classes) + 1) ** 1.3).astype(int))  # rank order
    class_ids = rng.permutation(num_classes)
    acc = np.clip(0.5 + 0.4 * np.log(counts) / np.log(200) + rng.normal(0, 0.02, num_classes), 0, 1)
    ek = 0.5 / np.sqrt(counts) + rng.uniform(0, 0.01, num_classes)
    per_class = [
        {"class_id": int(class_ids[r]), "class_rank": r, "train_count": int(counts[r]),
         "test_count": 30, "accuracy": float(acc[r]), "ekld": float(ek[r]),
         "consistency": float(1 - ek[r])}
        for r in range(num_classes)
    ]
    epochs = [{"epoch": e, "lr": 0.1 / (e + 1), "train_loss": 2.0 / (e + 1), "train_accuracy": 0.3 + 0.1 * e,
               "val_accuracy": 0.25 + 0.1 * e, "val_balanced_accuracy": 0.2 + 0.1 * e, "seconds": 1.5}
              for e in range(cfg.train.epochs)]
    metrics = {"accuracy": float(acc.mean()), "balanced_accuracy": float(acc.mean()),
               "many_accuracy": float(acc[:2].mean()), "medium_accuracy": float(acc[2:6].mean()),
               "few_accuracy": float(acc[6:].mean()), "ekld_mean": float(ek.mean()),
               "ekld_size_spearman": -1.0}
    return build_result(cfg, f"t{cfg.fingerprint()}", metrics, per_class, epochs,
                        train_seconds=12.5, device="cpu")


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_schema_columns_follow_the_config_and_the_contract():
    assert CONFIG_COLUMNS == list(TrialConfig().flat())
    trials = SCHEMAS["trials"].names
    assert trials[: 1 + len(CONFIG_COLUMNS)] == ["trial_id", *CONFIG_COLUMNS]
    assert set(TRIAL_METRICS) <= set(trials)
    assert SCHEMAS["per_class"].names[: 1 + len(CONFIG_COLUMNS)] == ["trial_id", *CONFIG_COLUMNS]
    spec = importlib.util.spec_from_file_location("check_results", CHECKER)
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    for table, required in checker.REQUIRED.items():
        assert required <= set(SCHEMAS[table].names), (table, required - set(SCHEMAS[table].names))
    # Types come from the annotations; `X | None` fields are nullable, partition keys never are.
    t = SCHEMAS["trials"]
    assert t.field("dataset_imbalance_ratio").type == pa.float64()
    assert t.field("seed").type == pa.int64() and not t.field("seed").nullable
    assert t.field("augment_git").type == pa.bool_()
    assert t.field("dataset_zipf_alpha").nullable and t.field("dataset_max_per_class").type == pa.int64()
    assert t.field("model_head").type == pa.string()  # a Literal of strings
    assert not t.field("dataset_source").nullable


def test_round_trip_through_pyarrow_pandas_and_duckdb(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    results = [make_result(make_cfg(seed=s, dataset={"nuisance": n}), seed=s)
               for s in (0, 1) for n in ("background", "rotation")]
    for r in results:
        write_trial(str(tmp_path), r)
    tables = read_tables(str(tmp_path))
    assert len(tables["trials"]) == 4 and len(tables["per_class"]) == 40 and len(tables["epochs"]) == 12
    assert tables["failed"].empty and list(tables["failed"].columns) == SCHEMAS["failed"].names
    tr = tables["trials"].set_index("trial_id")
    for r in results:
        row = tr.loc[r.trial_id]
        for k, v in r.trial.items():
            if k != "trial_id":
                assert row[k] == v or (pd.isna(row[k]) and v is None), k
        assert row["status"] == "ok" and row["schema_version"] >= 1
        pc = tables["per_class"].query("trial_id == @r.trial_id").sort_values("class_rank")
        assert pc["ekld"].tolist() == [x["ekld"] for x in r.per_class]
    # Partition columns come back as plain strings, not categories.
    assert not isinstance(tables["trials"]["dataset_nuisance"].dtype, pd.CategoricalDtype)
    assert set(tables["trials"]["dataset_nuisance"]) == {"background", "rotation"}

    pdt = pd.read_parquet(tmp_path / "trials")
    assert len(pdt) == 4 and set(pdt["dataset_nuisance"].astype(str)) == {"background", "rotation"}
    con = duckdb.connect()
    got = con.execute(
        f"select dataset_nuisance, count(*), avg(ekld) from read_parquet('{tmp_path}/per_class/**/*.parquet', "
        "hive_partitioning=true) group by 1 order by 1").fetchall()
    want = tables["per_class"].groupby("dataset_nuisance")["ekld"].agg(["count", "mean"])
    assert [g[0] for g in got] == ["background", "rotation"]
    for name, n, mean in got:
        assert n == want.loc[name, "count"] and mean == pytest.approx(want.loc[name, "mean"])
    assert con.execute(f"select count(*) from read_parquet('{tmp_path}/epochs/**/*.parquet', "
                       "hive_partitioning=true)").fetchone()[0] == 12


def test_layout_is_hive_partitioned_one_file_per_trial(tmp_path):
    r = make_result(make_cfg())
    write_trial(str(tmp_path), r)
    want = [f"{t}/dataset_source=digits/dataset_nuisance=background/{r.trial_id}.parquet"
            for t in ("epochs", "per_class", "trials")]
    assert all_files(tmp_path) == want
    body = pq.read_table(tmp_path / want[2])
    assert "dataset_source" not in body.column_names and "trial_id" in body.column_names


def test_writing_the_same_trial_twice_leaves_one_row(tmp_path):
    cfg = make_cfg()
    write_trial(str(tmp_path), make_result(cfg, seed=0))
    again = make_result(cfg, seed=1)  # a retry: same trial, new numbers
    write_trial(str(tmp_path), again)
    t = read_tables(str(tmp_path))
    assert len(t["trials"]) == 1 and len(t["per_class"]) == 10 and len(t["epochs"]) == 3
    assert t["trials"]["ekld_mean"].iloc[0] == again.trial["ekld_mean"]
    assert len(all_files(tmp_path)) == 3


def test_a_write_failing_midway_leaves_no_files(tmp_path, monkeypatch):
    real, calls = store._write_parquet, []

    def flaky(data, path, fs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("device gone")
        real(data, path, fs)

    monkeypatch.setattr(store, "_write_parquet", flaky)
    with pytest.raises(OSError, match="device gone"):
        write_trial(str(tmp_path), make_result(make_cfg()))
    # Staged outside the table folders, and nothing left anywhere.
    assert len(calls) == 2 and os.path.dirname(calls[0]) == str(tmp_path / "_staging")
    assert all_files(tmp_path) == []


def test_a_failing_rename_leaves_no_orphans(tmp_path, monkeypatch):
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if "/trials/" in dst:
            raise OSError("rename failed")
        real(src, dst)

    monkeypatch.setattr(store.os, "replace", flaky)
    with pytest.raises(OSError, match="rename failed"):
        write_trial(str(tmp_path), make_result(make_cfg()))
    assert len(calls) == 3 and all_files(tmp_path) == []


def _broken(kind: str, r: TrialResult) -> TrialResult:
    if kind == "missing":
        del r.per_class[3]["ekld"]
    elif kind == "extra":
        r.trial["ekld_typo"] = 0.1
    elif kind == "float_in_int":
        r.per_class[0]["train_count"] = 12.5
    elif kind == "string_in_float":
        r.epochs[1]["lr"] = "0.1"
    elif kind == "null_id":
        r.epochs[0]["epoch"] = None
    elif kind == "other_trial":
        r.per_class[0]["trial_id"] = "someone_else"
    elif kind == "other_partition":
        r.epochs[0]["dataset_nuisance"] = "rotation"
    elif kind == "duplicate":
        r.epochs[1]["epoch"] = 0
    elif kind == "bad_id":
        r.trial_id = "../escape"
    return r


@pytest.mark.parametrize("kind", ["missing", "extra", "float_in_int", "string_in_float", "null_id",
                                  "other_trial", "other_partition", "duplicate", "bad_id"])
def test_bad_rows_are_rejected_before_any_file_exists(tmp_path, kind):
    with pytest.raises(SchemaError) as err:
        write_trial(str(tmp_path), _broken(kind, make_result(make_cfg())))
    if kind == "missing":
        assert "per_class row 3" in str(err.value) and "'ekld'" in str(err.value)
    if kind == "extra":
        assert "ekld_typo" in str(err.value)
    assert all_files(tmp_path) == []


def test_check_results_passes_on_written_folder(tmp_path):
    for s in range(3):
        write_trial(str(tmp_path), make_result(make_cfg(seed=s), seed=s))
    out = subprocess.run([sys.executable, str(CHECKER), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok: 3 trials, 30 per-class rows, 9 epoch rows" in out.stdout


def test_failure_record_is_replaced_by_a_later_success(tmp_path):
    cfg = make_cfg()
    r = make_result(cfg)
    write_failure(str(tmp_path), r.trial_id, cfg, "RuntimeError: boom", attempts=3)
    failed = read_table(str(tmp_path), "failed")
    assert failed[["trial_id", "error", "attempts"]].values.tolist() == [[r.trial_id, "RuntimeError: boom", 3]]
    assert failed["dataset_nuisance"].iloc[0] == "background" and failed["seed"].iloc[0] == 0
    assert not trial_exists(str(tmp_path), r.trial_id) and read_trial(str(tmp_path), r.trial_id) is None
    write_trial(str(tmp_path), r)
    assert read_table(str(tmp_path), "failed").empty
    assert trial_exists(str(tmp_path), r.trial_id)
    stored = read_trial(str(tmp_path), r.trial_id)
    assert stored["trial"]["accuracy"] == r.trial["accuracy"]
    assert stored["trial"]["dataset_nuisance"] == "background"
    assert stored["last_epoch"]["epoch"] == cfg.train.epochs - 1 and len(stored["per_class"]) == 10


def test_missing_tables_read_as_empty_frames_with_columns(tmp_path):
    t = read_tables(str(tmp_path / "nothing"))
    for name, frame in t.items():
        assert frame.empty and list(frame.columns) == SCHEMAS[name].names


def test_an_older_file_missing_a_column_reads_it_as_null(tmp_path):
    r1, r2 = make_result(make_cfg(seed=0)), make_result(make_cfg(seed=1), seed=1)
    write_trial(str(tmp_path), r1)
    write_trial(str(tmp_path), r2)
    path = next((tmp_path / "trials").rglob(f"{r1.trial_id}.parquet"))
    pq.write_table(pq.read_table(path).drop_columns(["ekld_head"]), path)  # as an older version wrote
    t = read_table(str(tmp_path), "trials").set_index("trial_id")
    assert pd.isna(t.loc[r1.trial_id, "ekld_head"])
    assert t.loc[r2.trial_id, "ekld_head"] == pytest.approx(r2.trial["ekld_head"])


def test_temporaries_of_a_running_write_are_invisible(tmp_path):
    r = make_result(make_cfg())
    write_trial(str(tmp_path), r)
    folder = next((tmp_path / "trials").rglob("*.parquet")).parent
    (folder / f".tmp-other-123.parquet").write_bytes(b"half written")
    assert len(read_table(str(tmp_path), "trials")) == 1


def test_head_tail_mean_uses_thirds_by_train_count():
    counts = [100, 50, 40, 30, 20, 10, 5, 4, 3]
    values = [1, 2, 3, 4, 5, 6, 7, 8, float("nan")]
    head, tail = head_tail_mean(counts[::-1], values[::-1])  # order of the input does not matter
    assert head == pytest.approx(2.0) and tail == pytest.approx(7.5)
    r = make_result(make_cfg())
    ek = [x["ekld"] for x in r.per_class]
    assert r.trial["ekld_head"] == pytest.approx(np.mean(ek[:3]))
    assert r.trial["ekld_tail"] == pytest.approx(np.mean(ek[-3:]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_round_trip_with_endpoint_from_environment(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        # pyarrow's S3 filesystem picks the endpoint up from AWS_ENDPOINT_URL (nothing else set).
        for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                     "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket="res")
        root = "s3://res/sweeps/demo"
        cfg = make_cfg()
        r = make_result(cfg)
        write_failure(root, r.trial_id, cfg, "boom", attempts=2)
        write_trial(root, r)
        write_trial(root, r)
        # (pyarrow leaves an empty "folder/" marker where it deleted the failed/ record.)
        keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="res")["Contents"]
                      if not o["Key"].endswith("/"))
        assert keys == [f"sweeps/demo/{t}/dataset_source=digits/dataset_nuisance=background/{r.trial_id}.parquet"
                        for t in ("epochs", "per_class", "trials")]
        t = read_tables(root)
        assert len(t["trials"]) == 1 and len(t["per_class"]) == 10 and t["failed"].empty
        assert trial_exists(root, r.trial_id) and read_trial(root, r.trial_id)["last_epoch"]["epoch"] == 2
        # The analysis reader finds the sweep inside a remote folder of sweeps, too.
        from git_ray.analysis import find_sweeps, load
        assert [s.name for s in find_sweeps("s3://res/sweeps")] == ["demo"]
        loaded = load("s3://res/sweeps")
        assert loaded["trials"]["sweep"].tolist() == ["demo"] and len(loaded["per_class"]) == 10
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Staging, full disks, and what counts as a finished trial


def test_readers_never_see_a_staged_file(tmp_path, monkeypatch):
    """Mid-write (every file staged, none renamed yet) the table globs of DuckDB, pyarrow and
    pandas see nothing: the staging folder is outside them."""
    duckdb = pytest.importorskip("duckdb")
    write_trial(str(tmp_path), make_result(make_cfg(seed=1), seed=1))  # one finished trial
    seen: list[tuple[int, int, int, list[str]]] = []
    real = os.replace

    def look_then_rename(src, dst):
        if not seen:
            staged = sorted(os.listdir(tmp_path / "_staging"))
            n_duck = duckdb.connect().execute(f"select count(*) from read_parquet('{tmp_path}/per_class/**/*.parquet', "
                                "hive_partitioning=true)").fetchone()[0]
            seen.append((n_duck, len(pd.read_parquet(tmp_path / "per_class")),
                         len(read_table(str(tmp_path), "trials")), staged))
        real(src, dst)

    monkeypatch.setattr(store.os, "replace", look_then_rename)
    write_trial(str(tmp_path), make_result(make_cfg(seed=2), seed=2))
    n_duck, n_pd, n_trials, staged = seen[0]
    assert (n_duck, n_pd, n_trials) == (10, 10, 1)  # only the finished trial's rows
    assert len(staged) == 3 and all(n.endswith(".part") for n in staged)
    assert os.listdir(tmp_path / "_staging") == []  # all renamed into place
    assert len(read_table(str(tmp_path), "per_class")) == 20


def test_a_full_disk_is_named_and_leaves_no_staging_file(tmp_path, monkeypatch):
    import errno

    from git_ray import storage

    real, calls = os.fsync, []

    def full(fd):  # the bytes were written; the device refuses them on flush
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(storage.os, "fsync", full)
    result = make_result(make_cfg())
    with pytest.raises(storage.StorageFullError) as err:
        write_trial(str(tmp_path), result)
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC and "no space left on the device" in msg
    assert f"{result.trial_id}." in msg  # the file it names is the trial's own
    assert "_staging" in msg and "partial file was removed" in msg
    assert all_files(tmp_path) == []  # nor in _staging/


def test_stale_staging_files_are_removed_by_the_next_writer(tmp_path, monkeypatch):
    stage = tmp_path / "_staging"
    stage.mkdir()
    old, fresh = stage / "told.trials.aaaa.part", stage / "tnew.trials.bbbb.part"
    old.write_bytes(b"killed mid-write")
    fresh.write_bytes(b"being written by a live trial")
    hour_ago = os.path.getmtime(old) - 3600
    os.utime(old, (hour_ago, hour_ago))
    monkeypatch.setattr(store, "_cleaned", set())  # a new process
    write_trial(str(tmp_path), make_result(make_cfg()))
    assert sorted(os.listdir(stage)) == [fresh.name]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("table", ["trials", "per_class", "epochs"])
def test_a_truncated_or_missing_file_makes_the_trial_unfinished(tmp_path, table):
    ok, bad = make_result(make_cfg(seed=0)), make_result(make_cfg(seed=1), seed=1)
    for r in (ok, bad):
        write_trial(str(tmp_path), r)
    assert store.complete_trial_ids(str(tmp_path)) == {ok.trial_id, bad.trial_id}
    path = next((tmp_path / table).rglob(f"{bad.trial_id}.parquet"))
    _truncate(path)
    assert store.complete_trial_ids(str(tmp_path)) == {ok.trial_id}
    assert store.finished_trial_ids(str(tmp_path)) == {ok.trial_id}
    assert not store.trial_files_readable(str(tmp_path), bad.trial_id) and not trial_exists(str(tmp_path), bad.trial_id)
    assert store.trial_files_readable(str(tmp_path), ok.trial_id)
    with pytest.warns(UserWarning, match=rf"{path.name} cannot be read.*verify .* --repair"):
        assert read_trial(str(tmp_path), bad.trial_id) is None
    assert read_trial(str(tmp_path), ok.trial_id) is not None
    assert list(store.unreadable_files(str(tmp_path), table)) == [str(path)]
    path.unlink()  # a missing file counts the same
    assert store.complete_trial_ids(str(tmp_path)) == {ok.trial_id}
    write_trial(str(tmp_path), bad)  # the re-run replaces the bad files
    assert store.complete_trial_ids(str(tmp_path)) == {ok.trial_id, bad.trial_id}
    assert read_trial(str(tmp_path), bad.trial_id)["trial"]["accuracy"] == bad.trial["accuracy"]
