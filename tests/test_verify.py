"""`git-ray verify`: every kind of damage a killed writer, a full disk or a hand edit leaves in a
sweep folder and its generator cache is reported; --repair moves exactly the bad files into
quarantine (same relative paths, nothing deleted), after which the folder verifies clean and the
damaged trials read as missing (so the next run redoes them)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from git_ray.cli import main
from git_ray.config import GeneratorConfig
from git_ray.generative import generator_fingerprint, get_generator
from git_ray.results import complete_trial_ids, write_failure, write_trial
from git_ray.results.verify import repair, verify
from test_generative_train import TINY, tiny_data
from test_results_store import make_cfg, make_result

CHECKER = Path("/work/shared/tools/check_results.py")
GEN = GeneratorConfig(steps=2, checkpoint_every=2, **TINY)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def trial_file(root: Path, table: str, trial_id: str) -> Path:
    return next((root / table).rglob(f"{trial_id}.parquet"))


@pytest.fixture(scope="module")
def storage_template(tmp_path_factory):
    """A storage folder with a 7-trial sweep and a generator cache beside it (as a sweep's
    <storage> holds them), built once; each test damages its own copy."""
    base = tmp_path_factory.mktemp("template") / "storage"
    results = [make_result(make_cfg(seed=s), seed=s) for s in range(7)]
    for r in results:
        write_trial(str(base / "demo"), r)
    data = tiny_data()
    for seed in (0, 1):
        get_generator(data, GEN.model_copy(update={"seed": seed}), cache=str(base / "generators"),
                      device="cpu", log=lambda m: None)
    fps = [generator_fingerprint(data.fingerprint, GEN.model_copy(update={"seed": s})) for s in (0, 1)]
    return base, [r.trial_id for r in results], fps


@pytest.fixture
def sweep(tmp_path, storage_template):
    base, ids, fps = storage_template
    shutil.copytree(base, tmp_path / "storage")
    return tmp_path / "storage" / "demo", tmp_path / "storage" / "generators", ids, fps


def test_a_clean_sweep_verifies_clean(sweep, capsys):
    root, cache, ids, fps = sweep
    assert main(["verify", str(root)]) == 0
    out = capsys.readouterr().out
    assert "7 trials whole" in out and "2 whole" in out and "no problems found" in out
    assert str(cache) in out  # the cache beside the sweep was found and checked


def test_every_kind_of_damage_is_reported_then_quarantined(sweep, capsys):
    duckdb = pytest.importorskip("duckdb")
    root, cache, ids, fps = sweep
    a, b, c, d, e, f, ok = ids
    cut = lambda p: p.write_bytes(p.read_bytes()[:100])  # noqa: E731 - truncate
    cut(trial_file(root, "trials", a))                              # unreadable trials row
    cut(trial_file(root, "per_class", b))                           # unreadable per_class
    trial_file(root, "trials", c).unlink()                          # orphans: per_class + epochs
    trial_file(root, "epochs", d).unlink()                          # trials row without epochs
    e_path = trial_file(root, "trials", e)                          # a column of another type
    t = pq.read_table(e_path)
    i = t.schema.get_field_index("accuracy")
    pq.write_table(t.set_column(i, "accuracy", pa.array([str(t.column("accuracy")[0])])), e_path)
    write_failure(str(root), f, make_cfg(seed=5), "boom", attempts=2)  # stale failure record
    tmp = trial_file(root, "trials", ok).parent / ".tmp-killed.parquet"  # leftover in a table folder
    tmp.write_bytes(b"PAR1 half a file")
    stage = root / "_staging"
    stale = stage / f"{ok}.trials.dead.part"                        # stale staging file
    stale.write_bytes(b"killed")
    os.utime(stale, (1, 1))
    (stage / "live.trials.x.part").write_bytes(b"a write in progress")  # fresh: left alone
    gen = cache / fps[0] / "generator.pt"                           # truncated generator
    cut(gen)
    meta = cache / fps[1] / "meta.json"                             # meta of another place
    meta.write_text(meta.read_text().replace(fps[1], fps[0]))

    report = verify(str(root))
    got = {(p.kind, Path(p.location).name if p.kind == "generator" else p.shown) for p in report.problems}
    rel = lambda table, tid: str(trial_file(root, table, tid).relative_to(root))  # noqa: E731
    part = "dataset_source=digits/dataset_nuisance=background"
    want = {("unreadable", f"trials/{part}/{a}.parquet"), ("orphan", f"per_class/{part}/{a}.parquet"),
            ("orphan", f"epochs/{part}/{a}.parquet"),
            ("unreadable", f"per_class/{part}/{b}.parquet"), ("orphan", f"trials/{part}/{b}.parquet"),
            ("orphan", f"epochs/{part}/{b}.parquet"),
            ("orphan", rel("per_class", c)), ("orphan", rel("epochs", c)),
            ("orphan", rel("trials", d)), ("orphan", rel("per_class", d)),
            ("schema", rel("trials", e)), ("orphan", rel("per_class", e)), ("orphan", rel("epochs", e)),
            ("orphan", rel("failed", f)),
            ("leftover", f"trials/{part}/.tmp-killed.parquet"), ("leftover", f"_staging/{stale.name}"),
            ("generator", "generator.pt"), ("generator", "meta.json")}
    assert got == want
    assert report.trials_ok == 2 and report.generators_ok == 0  # ok and f; both generators are hit

    assert main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"git-ray verify {root} --repair" in out and "18 problem(s)" in out
    assert "is trial" not in out and "accuracy" in out and "cannot be read" in out

    before = files(root) | {f"G/{p}" for p in files(cache)}
    assert main(["verify", str(root), "--repair"]) == 1  # problems were found (and moved)
    after = files(root) | {f"G/{p}" for p in files(cache)}
    assert len(before) == len(after)  # moved, never deleted
    for p in report.problems:
        if p.kind != "generator":
            assert not (root / p.shown).exists()
            folder, name = os.path.split(p.shown)
            assert (root / "quarantine" / folder / name.lstrip("._")).exists()
    assert (cache / "quarantine" / fps[0] / "generator.pt").exists()
    assert (cache / "quarantine" / fps[1] / "meta.json").exists()
    assert (stage / "live.trials.x.part").exists()

    assert main(["verify", str(root)]) == 0
    assert complete_trial_ids(str(root)) == {f, ok}  # the damaged trials now read as missing
    checked = subprocess.run([sys.executable, str(CHECKER), str(root)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout  # the contract checker agrees (no temporaries)
    n = duckdb.connect().execute(f"select count(*) from read_parquet('{root}/trials/**/*.parquet')").fetchone()[0]
    assert n == 2


def test_not_a_results_folder_is_a_user_error(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert "not a results folder" in capsys.readouterr().err


def test_repair_twice_keeps_both_copies(sweep):
    root, cache, ids, fps = sweep
    path = trial_file(root, "trials", ids[0])
    body = path.read_bytes()
    path.write_bytes(body[:50])
    repair(verify(str(root)))
    write_trial(str(root), make_result(make_cfg(seed=0), seed=0))  # the re-run
    trial_file(root, "trials", ids[0]).write_bytes(body[:60])
    repair(verify(str(root)))
    kept = sorted(p.name for p in (root / "quarantine" / "trials").rglob(f"{ids[0]}.parquet*"))
    assert kept == [f"{ids[0]}.parquet", f"{ids[0]}.parquet.1"]


@pytest.mark.parametrize("table", ["trials", "per_class"])
def test_analyze_skips_an_unreadable_file_with_a_warning(sweep, table, capsys):
    from git_ray.analysis import load
    from git_ray.analysis.load import UnreadableFileWarning

    root, cache, ids, fps = sweep
    bad = trial_file(root, table, ids[0])
    bad.write_bytes(bad.read_bytes()[:80])
    with pytest.warns(UnreadableFileWarning) as seen:
        tables = load(str(root))
    msg = str(seen[0].message)
    assert str(bad) in msg and f"git-ray verify {root} --repair" in msg
    if table == "trials":  # the trial is left out, with its per_class and epochs rows
        assert set(tables["trials"]["trial_id"]) == set(ids[1:])
        assert ids[0] not in set(tables["per_class"]["trial_id"])
    else:
        assert len(tables["trials"]) == 7 and ids[0] not in set(tables["per_class"]["trial_id"])
    with pytest.warns(UnreadableFileWarning):
        assert main(["analyze", str(root), "--out", str(root.parent / "analysis")]) == 0


def test_a_full_disk_or_an_outage_ends_the_command_with_its_message(tmp_path, monkeypatch, capsys):
    import errno

    from git_ray import storage
    from git_ray.results import verify as verify_module

    for err in (storage.StorageFullError(errno.ENOSPC, "no space left on the device writing X"),
                storage.StorageUnavailableError(None, "s3://b/k: read kept failing for 60 s")):
        def fail(*args, _err=err, **kwargs):
            raise _err

        monkeypatch.setattr(verify_module, "verify", fail)
        assert main(["verify", str(tmp_path)]) == 1
        assert str(err) in capsys.readouterr().err
