"""Analysis on results of a small real run: every table checked against a direct pandas
computation, every figure a real PNG, the HTML page self-contained, clear errors and warnings.

One session fixture trains a few tiny classifiers on the embedded digits data (run_trial, CPU)
and writes them with write_trial into four sweep folders under one storage folder:
  grid     2 balancing methods x oracle off/on x 2 seeds
  gitlike  grid's runs without oracle + its oracle runs relabelled as GIT runs (the GIT table
           needs both sides; training a generator is too slow for a unit test)
  search   3 focal-loss runs and a sweep.yaml with a search space (study rebuilt from trials)
  opt      the same runs and an optuna.db holding one complete trial (importances skipped)
  old      two grid runs (oracle off, on), one trials file rewritten without a column (an older schema)
"""
from __future__ import annotations

import base64
import dataclasses
import html.parser
import shutil
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from git_ray.analysis import MixedSchemaWarning, Sweep, analyze, default_out, load, report_text
from git_ray.analysis import figures as F
from git_ray.analysis.search import find_study
from git_ray.analysis.tables import METRICS, effect_table, summary_table
from git_ray.config import ConfigError, trial_config
from git_ray.results import read_table, write_failure, write_trial
from git_ray.trial import run_trial

BASE = {"model": {"width": 4},
        "train": {"epochs": 2, "s1": 1, "s2": 2, "warmup_epochs": 0, "threads": 1, "batch_size": 64, "lr": 0.05},
        "eval": {"ekld_draws": 4, "ekld_images_per_class": 5, "many_threshold": 20, "few_threshold": 3}}
FIGURES = ("ekld_vs_size", "accuracy_vs_size", "tail_effect", "learning_curves", "search_search", "search_opt")
SPACE = {"balance.focal_gamma": {"uniform": [0.0, 5.0]}}


def cfg_of(**over):
    d = {k: dict(v) for k, v in BASE.items()}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return trial_config(d)


def relabel_as_git(r):
    """A real run's rows with the oracle flag moved to the GIT flag (and a new trial id)."""
    tid = "g" + r.trial_id
    move = lambda row: {**row, "trial_id": tid, "augment_git": True, "augment_oracle": False}  # noqa: E731
    return dataclasses.replace(r, trial_id=tid, trial=move(r.trial),
                               per_class=[move(x) for x in r.per_class],
                               epochs=[{**x, "trial_id": tid} for x in r.epochs])


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    grid = [run_trial(cfg_of(balance={"loss": "ce", "sampler": s}, augment={"oracle": o}, seed=seed))
            for s in ("none", "drs") for o in (False, True) for seed in (0, 1)]
    for r in grid:
        write_trial(str(root / "grid"), r)
        write_trial(str(root / "gitlike"), relabel_as_git(r) if r.trial["augment_oracle"] else r)
    search = [run_trial(cfg_of(balance={"loss": "focal", "focal_gamma": g})) for g in (0.5, 1.5, 3.0)]
    for r in search:
        write_trial(str(root / "search"), r)
        write_trial(str(root / "opt"), r)
    (root / "search" / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": "search", "search": {"algorithm": "random", "metric": "balanced_accuracy", "mode": "max",
                                      "space": SPACE}}))
    study = optuna.create_study(storage=f"sqlite:///{root / 'opt' / 'optuna.db'}", study_name="opt",
                                direction="maximize")
    dist = {"balance.focal_gamma": optuna.distributions.FloatDistribution(0.0, 5.0)}
    study.add_trial(optuna.trial.create_trial(params={"balance.focal_gamma": 0.5}, distributions=dist,
                                              value=search[0].epochs[-1]["val_balanced_accuracy"]))
    study.add_trial(optuna.trial.create_trial(params={"balance.focal_gamma": 1.5}, distributions=dist,
                                              state=optuna.trial.TrialState.FAIL))
    for r in (grid[0], grid[2]):  # ce, seed 0, oracle off and on
        write_trial(str(root / "old"), r)
    old = next((root / "old" / "trials").rglob(f"{grid[0].trial_id}.parquet"))
    pq.write_table(pq.read_table(old).drop_columns(["ekld_head"]), old)
    return {"root": root, "grid": grid, "search": search, "old_id": grid[0].trial_id}


@pytest.fixture(scope="session")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    with pytest.warns(MixedSchemaWarning, match="ekld_head"):
        rep = analyze([str(store["root"])], out=str(out), dpi=72)  # small PNGs: a faster test
    return rep


def read_files(folder: Path) -> pd.DataFrame:
    """A table read file by file with plain pandas (a dataset read takes one file's columns)."""
    frames = []
    for f in sorted(folder.rglob("*.parquet")):
        parts = dict(p.split("=", 1) for p in f.parent.relative_to(folder).parts)
        frames.append(pd.read_parquet(f).assign(**parts))
    return pd.concat(frames, ignore_index=True)


def direct_trials(store) -> pd.DataFrame:
    """Every sweep's trials read with plain pandas, and tail accuracy computed from per_class."""
    frames = []
    for sweep in ("gitlike", "grid", "old", "opt", "search"):
        t = read_files(store["root"] / sweep / "trials")
        pc = read_files(store["root"] / sweep / "per_class")
        tail = {}
        for tid, g in pc.groupby("trial_id"):
            g = g.sort_values("train_count", ascending=False, kind="stable")
            tail[tid] = g["accuracy"].iloc[-(len(g) // 3):].mean()
        frames.append(t.assign(sweep=sweep, tail_accuracy=t["trial_id"].map(tail)))
    return pd.concat(frames, ignore_index=True)


def test_group_keys_are_the_varying_config_columns(report):
    assert set(report.group_keys) == {"sweep", "balance_loss", "balance_sampler", "balance_focal_gamma",
                                      "augment_git", "augment_oracle"}
    assert report.averaged == ["seed"]
    assert report.counts == {"trials": 8 + 8 + 3 + 3 + 2, "per_class": 240, "epochs": 48, "failed": 0}


def test_summary_matches_pandas(report, store):
    direct = direct_trials(store)
    keys = report.group_keys
    want = direct.groupby(keys)[list(METRICS)].agg(["mean", "std", "count"])
    got = report.tables["summary"].set_index(keys)
    assert len(got) == len(want) == 4 + 4 + 2 + 3 + 3
    assert got["n_trials"].sum() == len(direct)
    for m in METRICS:
        for s in ("mean", "std", "count"):
            np.testing.assert_allclose(got.loc[want.index, f"{m}_{s}"].to_numpy(dtype=float),
                                       want[(m, s)].to_numpy(dtype=float), rtol=1e-9, equal_nan=True,
                                       err_msg=f"{m}_{s}")
    # The older file lacks ekld_head: its group's head eKLD counts one trial fewer.
    old = got.xs("old", level="sweep")
    assert old["ekld_head_count"].sum() == 1 and old["accuracy_count"].sum() == 2


def test_git_and_oracle_effects_match_pandas(report, store):
    direct = direct_trials(store)
    git = report.tables["git_effect"]
    assert set(git["sweep"]) == {"gitlike"} and len(git) == 2
    g = direct[direct["sweep"] == "gitlike"]
    for _, row in git.iterrows():
        d = g[g["balance_sampler"] == row["balance_sampler"]]
        for m in ("balanced_accuracy", "ekld_tail", "tail_accuracy", "ekld_mean"):
            want = d[d["augment_git"]][m].mean() - d[~d["augment_git"]][m].mean()
            assert row[f"{m}_delta"] == pytest.approx(want, nan_ok=True), m
        assert row["n_with"] == 2 and row["n_without"] == 2
    oracle = report.tables["oracle_effect"].set_index(["sweep", "balance_sampler"])
    assert sorted(oracle.index) == [("grid", "drs"), ("grid", "none"), ("old", "none")]
    d = direct[(direct["sweep"] == "grid") & (direct["balance_sampler"] == "drs")]
    want = d[d["augment_oracle"]]["ekld_tail"].mean() - d[~d["augment_oracle"]]["ekld_tail"].mean()
    assert oracle.loc[("grid", "drs"), "ekld_tail_delta"] == pytest.approx(want)


def test_one_configuration_is_one_group(store):
    t = load(str(store["root"] / "search"))["trials"]
    one = t[t["balance_focal_gamma"] == 1.5]
    s = summary_table(one)
    assert s["group"].tolist() == ["all"] and s["n_trials"].tolist() == [1]
    assert s["accuracy_mean"].item() == one["accuracy"].item() and np.isnan(s["accuracy_std"].item())


def test_effect_table_without_both_sides_is_none(store):
    t = direct_trials(store)
    assert effect_table(t[t["sweep"] == "grid"], "augment_git") is None


def test_tail_and_size_curve_numbers_match_pandas(report, store):
    direct = direct_trials(store)
    tail = report.tables["tail"]
    grid = direct[direct["sweep"] == "grid"]
    assert set(tail["panel"]) == {f"{s}: digits / background" for s in ("gitlike", "grid", "old", "opt", "search")}
    row = tail[(tail["panel"] == "grid: digits / background") & (tail["method"] == "ce+drs")
               & (tail["augmentation"] == "oracle")]
    want = grid[(grid["balance_sampler"] == "drs") & grid["augment_oracle"]]
    assert row["ekld_tail_mean"].item() == pytest.approx(want["ekld_tail"].mean())
    assert row["tail_accuracy_mean"].item() == pytest.approx(want["tail_accuracy"].mean())
    assert row["ekld_tail_count"].item() == 2
    pc = pd.read_parquet(store["root"] / "grid" / "per_class").merge(
        grid[["trial_id"]], on="trial_id")
    pc = pc.assign(method=np.where(pc["balance_sampler"] == "drs", "ce+drs", "ce"),
                   augmentation=np.where(pc["augment_oracle"], "oracle", "none"))
    curve = F.size_curve(pc, "ekld")
    assert set(curve["label"]) == {"ce", "ce+drs", "ce +oracle", "ce+drs +oracle"}
    c = curve[curve["label"] == "ce+drs"].set_index("size")
    d = pc[(pc["method"] == "ce+drs") & (pc["augmentation"] == "none")]
    want = d.groupby("train_count")["ekld"].mean()
    np.testing.assert_allclose(c.loc[want.index.astype(float), "mean"], want.to_numpy())


def test_size_bins_pool_many_sizes_on_a_log_scale():
    sizes = pd.Series(np.arange(1, 1001))
    b = F.size_bins(sizes)
    assert b.nunique() == F.N_BINS
    assert (np.diff(b.to_numpy()) >= 0).all() and b.iloc[0] < 2 < b.iloc[-1] < 1000 < b.iloc[-1] * 2


def _png_ok(data: bytes) -> tuple[int, int]:
    from PIL import Image
    import io
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.verify()
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_a_nontrivial_png(report, name):
    path = Path(report.out) / f"fig_{name}.png"
    data = path.read_bytes()
    assert data == report.figures[name] and len(data) > 8_000
    w, h = _png_ok(data)
    assert w >= 500 and h >= 250


def test_tables_written_as_csv_and_markdown(report):
    out = Path(report.out)
    for name in ("summary", "git_effect", "oracle_effect", "tail"):
        csv = pd.read_csv(out / f"{name}.csv")
        assert len(csv) == len(report.tables[name])
        md = (out / f"{name}.md").read_text().splitlines()
        assert len(md) == len(report.display[name]) + 2 and md[1].startswith("| ---")
    summary = pd.read_csv(out / "summary.csv")
    np.testing.assert_allclose(summary["ekld_tail_mean"], report.tables["summary"]["ekld_tail_mean"])
    assert "±" in (out / "summary.md").read_text()


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tables, self.h2 = {}, 0, []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs[a["alt"]] = a["src"]
        self.tables += tag == "table"
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def test_html_is_one_file_embedding_every_figure_and_table(report):
    page = _Page()
    page.feed((Path(report.out) / "report.html").read_text())
    page.close()
    assert set(page.imgs) == set(FIGURES)
    for name, src in page.imgs.items():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == report.figures[name]
    assert page.tables == len(report.display) == 5
    assert {"The paper's claims", "Summary", "Effect of GIT", "Effect of the oracle", "The tail", "Figures"} <= set(page.h2)


def test_text_report_and_notes(report):
    text = report_text(report)
    assert "24 finished trials" in text and "grouped by: sweep, balance_loss" in text
    assert "GIT minus no-GIT:" in text and "Oracle minus none:" in text and "Δ ekld_tail" in text
    assert "averaged over: seed" in text and "report.html" in text
    notes = "\n".join(report.notes)
    assert "opt: parameter importances need at least 2 complete trials (1 so far)" in notes
    assert "ekld_head" in notes  # the mixed-schema warning is a note too


def test_studies_stored_and_rebuilt(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MixedSchemaWarning)  # the "old" sweep; tested elsewhere
        tables = load(str(store["root"]), tables=("trials", "epochs"))
    trials, epochs = tables["trials"], tables["epochs"]
    opt = find_study(Sweep("opt", str(store["root"] / "opt")), trials, epochs)
    assert opt.source.endswith("optuna.db") and len(opt.study.trials) == 2
    rebuilt = find_study(Sweep("search", str(store["root"] / "search")), trials, epochs)
    assert "rebuilt" in rebuilt.source
    got = sorted((t.params["balance.focal_gamma"], t.value) for t in rebuilt.study.trials)
    want = sorted((r.trial["balance_focal_gamma"], r.epochs[-1]["val_balanced_accuracy"]) for r in store["search"])
    assert np.allclose(got, want)
    assert find_study(Sweep("grid", str(store["root"] / "grid")), trials, epochs).study is None


def test_load_several_paths_and_a_running_sweep(store, tmp_path):
    run = tmp_path / "running"
    shutil.copytree(store["root"] / "grid", run)
    part = next((run / "per_class").rglob("*.parquet")).parent
    (part / ".tmp-x-1.parquet").write_bytes(b"half written")  # a write in progress
    r = store["search"][0]
    write_trial(str(tmp_path / "scratch"), r)  # a trial whose per_class landed, trials not yet
    src = next((tmp_path / "scratch" / "per_class").rglob("*.parquet"))
    shutil.copy(src, part / src.name)
    t = load([str(run), str(store["root"] / "search")])
    assert sorted(t["trials"]["sweep"].unique()) == ["running", "search"]
    assert (t["trials"]["sweep"] == "running").sum() == 8
    assert len(t["per_class"][t["per_class"]["sweep"] == "running"]) == 80
    assert not isinstance(t["trials"]["dataset_nuisance"].dtype, pd.CategoricalDtype)


def test_default_out_is_beside_the_first_results():
    assert default_out(["results/a", "results/b"]) == "results/a/analysis"
    assert default_out("s3://bkt/sweeps/a/") == "s3://bkt/sweeps/a/analysis"


def test_no_results_is_a_clear_error(tmp_path, store):
    with pytest.raises(ConfigError, match="no such folder"):
        load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        analyze([str(tmp_path / "empty")])
    assert str(tmp_path / "empty") in str(err.value) and "trials/, per_class/ and epochs/" in str(err.value)
    (tmp_path / "started" / "trials").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no finished trials"):
        load(str(tmp_path / "started"))
    cfg = cfg_of()
    write_failure(str(tmp_path / "allfailed"), "t1", cfg, "RuntimeError: out of memory", attempts=2)
    with pytest.raises(ConfigError, match="1 trial.s. failed .*out of memory"):
        load(str(tmp_path / "allfailed"))


def test_files_of_another_type_are_read_one_by_one_with_a_warning(store, tmp_path):
    import pyarrow as pa
    sweep = tmp_path / "mixed"
    shutil.copytree(store["root"] / "grid", sweep)
    files = sorted((sweep / "per_class").rglob("*.parquet"))
    t = pq.read_table(files[0])
    pq.write_table(t.set_column(t.schema.get_field_index("ekld"), "ekld", pa.array(["bad"] * len(t))), files[0])
    t = pq.read_table(files[1])
    pq.write_table(t.set_column(t.schema.get_field_index("test_count"), "test_count",
                                t.column("test_count").cast(pa.float64())), files[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load(str(sweep))["per_class"]
    msgs = [str(w.message) for w in caught if issubclass(w.category, MixedSchemaWarning)]
    assert len(msgs) == 1 and "skipped 1" in msgs[0] and files[0].name in msgs[0]
    assert len(got) == 70 and got["test_count"].dtype == np.int64
    assert set(got["dataset_nuisance"]) == {"background"}
    assert len(read_table(str(store["root"] / "grid"), "per_class")) == 80  # the original is intact


def test_git_tail_line_states_means_and_claim_d():
    from git_ray.analysis.report import Report, git_tail_line

    summary = pd.DataFrame({"augment_git": [False, True, False, True],
                            "ekld_tail_mean": [0.04, 0.03, 0.06, 0.05]})
    claims = pd.DataFrame([{"claim": "d", "nuisance": "digits / background", "effect": -0.01,
                            "ci_low": -0.02, "ci_high": -0.005, "n": 4, "verdict": "holds"},
                           {"claim": "c", "nuisance": "digits / background", "effect": 0.5,
                            "ci_low": 0.4, "ci_high": 0.6, "n": 4, "verdict": "holds"}])
    rep = Report(sweeps=[], group_keys=[], averaged=[], counts={},
                 tables={"summary": summary, "claims": claims})
    line = git_tail_line(rep)
    assert "0.0500 without GIT, 0.0400 with GIT (-20%)" in line
    assert "paired change -0.0100 [-0.0200, -0.0050] over 4 pairs, claim d holds" in line
    assert "0.5000" not in line  # only claim d speaks for GIT
    rep.tables["summary"] = summary[summary["augment_git"]]
    assert git_tail_line(rep) is None  # no trials without GIT: nothing to compare
