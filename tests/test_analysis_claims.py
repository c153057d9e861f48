"""The paper's claims checked on constructed results whose answers are known.

Trials are built from real configs (trial_config) with metrics set by the test: per-trial
Spearman, tail eKLD and accuracies drawn around chosen means, so each claim's effect and verdict
is known in advance. The end-to-end test writes real Parquet with write_trial and runs analyze.
"""
from __future__ import annotations

import html.parser
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from git_ray.analysis import analyze
from git_ray.analysis.claims import (
    FAILS, HOLDS, MISSING, bootstrap, claims_table, display_claims, findings, pair_key_columns,
)
from git_ray.config import trial_config
from git_ray.metrics.stats import spearman
from git_ray.results import build_result, write_trial

NUISANCES = ("background", "dilation")
INSTANCES = range(5)
COUNTS = [400, 200, 100, 50, 25, 12, 6, 3, 2]  # 9 classes: the tail third is 6, 3, 2
# (balance, augment) of each method the studies run.
RUNS = {"ERM": ({"sampler": "none"}, {}), "RS": ({"sampler": "resample"}, {}),
        "DRS": ({"sampler": "drs"}, {}), "oracle": ({"sampler": "none"}, {"oracle": True}),
        "DRS+GIT": ({"sampler": "drs"}, {"git": True})}
# The true means the metrics are drawn around: all five claims hold.
TRUTH = {"ERM": dict(rho=-0.6, tail=1.0, bal=0.70, few=0.40), "RS": dict(rho=-0.6, tail=0.95, bal=0.71, few=0.45),
         "DRS": dict(rho=-0.66, tail=0.9, bal=0.72, few=0.45), "oracle": dict(rho=-0.3, tail=0.4, bal=0.8, few=0.6),
         "DRS+GIT": dict(rho=-0.45, tail=0.7, bal=0.75, few=0.55)}
NOISE = 0.02


def config(nuisance: str, run: str, instance: int, seed: int = 0):
    balance, augment = RUNS[run]
    return trial_config({"dataset": {"nuisance": nuisance, "instance": instance}, "balance": balance,
                         "augment": augment, "seed": seed, "model": {"width": 4}})


def trial_row(nuisance: str, run: str, instance: int, truth: dict, rng: np.random.Generator, seed: int = 0) -> dict:
    cfg = config(nuisance, run, instance, seed)
    t = truth[run]
    noise = rng.normal(0.0, NOISE, 4)
    return {"trial_id": cfg.fingerprint(), **cfg.flat(), "ekld_size_spearman": t["rho"] + noise[0],
            "ekld_tail": t["tail"] * (1 + noise[1]), "balanced_accuracy": t["bal"] + noise[2],
            "few_accuracy": t["few"] + noise[3]}


def trials(truth=TRUTH, runs=tuple(RUNS), nuisances=NUISANCES, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([trial_row(n, r, i, truth, rng) for n in nuisances for r in runs for i in INSTANCES])


def rows(long: pd.DataFrame, claim: str, nuisance: str = "digits / background") -> pd.DataFrame:
    return long[(long["claim"] == claim) & (long["nuisance"] == nuisance)]


def verdict(long: pd.DataFrame, claim: str, nuisance: str = "digits / background") -> str:
    v = rows(long, claim, nuisance)["verdict"].unique()
    assert len(v) == 1, v
    return v[0]


def test_all_claims_hold_with_the_effects_constructed():
    long = claims_table(trials())
    assert set(long["nuisance"]) == {"digits / background", "digits / dilation"}
    for n in long["nuisance"].unique():
        for claim in "abcde":
            assert verdict(long, claim, n) == HOLDS, (claim, n, rows(long, claim, n)["reason"].tolist())
    a = rows(long, "a").set_index("measure")
    for m in ("ERM", "RS", "DRS"):
        r = a.loc[f"mean Spearman(size, eKLD), {m}"]
        assert r["effect"] == pytest.approx(TRUTH[m]["rho"], abs=0.03) and r["n"] == 5
        assert r["ci_low"] < r["effect"] < r["ci_high"] < 0
    c = rows(long, "c").set_index("measure")
    assert c.loc["tail eKLD ratio, oracle / ERM", "effect"] == pytest.approx(0.4, rel=0.05)
    assert c.loc["Spearman(size, eKLD), oracle minus ERM", "effect"] == pytest.approx(0.3, abs=0.03)
    d = rows(long, "d")
    assert d["effect"].item() == pytest.approx(-0.2, abs=0.03) and d["n"].item() == 5
    e = rows(long, "e").set_index("measure")
    assert e.loc["balanced accuracy, GIT minus no GIT (paired)", "effect"] == pytest.approx(0.03, abs=0.02)
    assert e.loc["few-class accuracy, GIT minus no GIT (paired)", "effect"] == pytest.approx(0.10, abs=0.02)
    # b's effect: the balanced methods' Spearman minus ERM's (0 and -0.06 constructed: DRS's
    # interval lies below ERM's, a steeper fall, which the claim allows).
    assert b_drs_below_erm(long)
    b = rows(long, "b").set_index("measure")
    assert b.loc["mean Spearman, RS minus ERM", "effect"] == pytest.approx(0.0, abs=0.03)
    assert b.loc["mean Spearman, RS minus ERM", "ci_low"] < 0 < b.loc["mean Spearman, RS minus ERM", "ci_high"]


def b_drs_below_erm(long: pd.DataFrame) -> bool:
    a = rows(long, "a").set_index("measure")["ci_high"]
    return a["mean Spearman(size, eKLD), DRS"] < rows(long, "a").set_index("measure").loc[
        "mean Spearman(size, eKLD), ERM", "ci_low"]


def test_git_that_raises_tail_ekld_does_not_hold():
    truth = {**TRUTH, "DRS+GIT": {**TRUTH["DRS+GIT"], "tail": 1.1, "bal": 0.68}}
    long = claims_table(trials(truth))
    d = rows(long, "d")
    assert verdict(long, "d") == FAILS and d["effect"].item() == pytest.approx(0.2, abs=0.03)
    assert d["ci_low"].item() > 0 and "reaches 0 or above" in d["reason"].item()
    assert verdict(long, "e") == FAILS and "balanced accuracy" in rows(long, "e")["reason"].iloc[0]
    assert verdict(long, "a") == verdict(long, "c") == HOLDS  # the other claims are unaffected


def test_balancing_that_removes_the_slope_fails_claim_b():
    truth = {**TRUTH, "RS": {**TRUTH["RS"], "rho": 0.05}}
    long = claims_table(trials(truth))
    assert verdict(long, "a") == FAILS and "RS" in rows(long, "a")["reason"].iloc[0]
    reason = rows(long, "b")["reason"].iloc[0]
    assert verdict(long, "b") == FAILS and "RS interval reaches 0" in reason and "lies above ERM's" in reason


def test_no_oracle_trials_leave_claim_c_without_a_verdict():
    long = claims_table(trials(runs=("ERM", "RS", "DRS", "DRS+GIT")))
    c = rows(long, "c")
    assert len(c) == 1 and c["verdict"].item() == MISSING
    assert c["reason"].item() == "no oracle trials for nuisance digits / background"
    assert math.isnan(c["effect"].item()) and c["n"].item() == 0
    assert verdict(long, "a") == verdict(long, "d") == HOLDS


def test_missing_methods_are_named():
    long = claims_table(trials(runs=("ERM", "DRS", "oracle")))
    # a: judged on the methods present, RS named as missing.
    assert verdict(long, "a") == HOLDS and "judged without RS (no RS trials" in rows(long, "a")["reason"].iloc[0]
    assert set(rows(long, "a")["measure"]) == {"mean Spearman(size, eKLD), ERM", "mean Spearman(size, eKLD), DRS"}
    assert verdict(long, "b") == HOLDS and "no RS trials" in rows(long, "b")["reason"].iloc[0]
    for claim in "de":
        assert verdict(long, claim) == MISSING
        assert rows(long, claim)["reason"].iloc[0] == "no GIT trials for nuisance digits / background"
    only_git = claims_table(trials(runs=("DRS", "DRS+GIT")))
    assert verdict(only_git, "b") == MISSING and "no ERM trials" in rows(only_git, "b")["reason"].iloc[0]
    assert verdict(only_git, "d") == HOLDS


def test_git_trials_pair_only_with_their_twin():
    t = trials(runs=("DRS", "DRS+GIT"))
    # Drop the no-GIT twins of instances 0-3: one pair is left, too few for an interval.
    t = t[~((t["augment_git"] == False) & (t["dataset_instance"] < 4))]  # noqa: E712
    long = claims_table(t)
    d = rows(long, "d")
    assert d["verdict"].item() == MISSING and "fewer than 2 paired units (1" in d["reason"].item()
    # A GIT setting (gen_frac) does not break the pair; the instance does.
    keys = pair_key_columns(t, "augment_git")
    assert "dataset_instance" in keys and "seed" in keys and "balance_sampler" in keys
    assert "augment_gen_frac" not in keys and "generator_steps" not in keys and "train_device" not in keys


def test_undefined_few_accuracy_is_reported():
    t = trials(runs=("DRS", "DRS+GIT"))
    t["few_accuracy"] = np.nan  # no class below eval.few_threshold
    e = rows(claims_table(t), "e")
    assert set(e["verdict"]) == {MISSING} and "few-class accuracy is undefined" in e["reason"].iloc[0]
    assert e["measure"].tolist() == ["balanced accuracy, GIT minus no GIT (paired)"] and e["n"].item() == 5


def test_bootstrap_is_reproducible_and_covers_the_true_effect():
    # 40 paired differences whose mean is exactly -0.2 (noise in +/- pairs), sd 0.05.
    half = np.random.default_rng(3).normal(0.0, 0.05, 20)
    diff = -0.2 + np.concatenate([half, -half])
    units = np.stack([1.0 + diff, np.ones(40)], axis=1)
    stat = lambda x: (x[..., 0] - x[..., 1]).mean(axis=1)  # noqa: E731
    a = bootstrap([units], stat, np.random.default_rng(7))
    b = bootstrap([units], stat, np.random.default_rng(7))
    assert a == b and a.n == 40 and a.effect == pytest.approx(-0.2)
    assert a.low < -0.2 < a.high
    # The interval's half-width is about 1.96 standard errors of the mean.
    se = diff.std(ddof=1) / math.sqrt(40)
    assert (a.high - a.low) / 2 == pytest.approx(1.96 * se, rel=0.2)
    # Whole tables are reproducible; another seed moves the interval, not the effect.
    t = trials()
    one, two, other = claims_table(t), claims_table(t), claims_table(t, seed=1)
    pd.testing.assert_frame_equal(one, two)
    np.testing.assert_allclose(one["effect"], other["effect"])
    assert not np.allclose(one["ci_low"].dropna(), other["ci_low"].dropna())


def test_bootstrap_with_one_unit_has_no_interval():
    e = bootstrap([np.array([[0.3]])], lambda x: x[..., 0].mean(axis=1), np.random.default_rng(0))
    assert e.effect == pytest.approx(0.3) and e.n == 1 and math.isnan(e.low) and not e.ok


def test_display_and_findings_say_what_the_numbers_say():
    long = claims_table(trials())
    short = display_claims(long)
    assert len(short) == 10 and set(short["verdict"]) == {HOLDS}
    row = short[(short["claim"] == "d") & (short["nuisance"] == "digits / dilation")].iloc[0]
    assert row["effect [95% CI] (n units)"].startswith("tail eKLD, GIT minus no GIT (paired): -0.")
    text = findings(long)
    assert "Under ERM, eKLD falls with class size for 2 of 2 nuisance(s) of digits (mean Spearman(size, eKLD) -0.6" in text
    assert "; under RS for 2 of 2 (-0.6" in text
    assert "Oracle augmentation multiplies ERM's tail eKLD by 0.4" in text and "GIT changes tail eKLD by -0.2" in text
    assert "lack the trials" not in text
    bad = findings(claims_table(trials({**TRUTH, "DRS+GIT": {**TRUTH["DRS+GIT"], "tail": 1.1}})))
    assert "GIT changes tail eKLD by +0.19 on background" in bad and "(lower with confidence for 0 of 2)" in bad


# ---------------------------------------------------------------------------------------------
# End to end: real Parquet through write_trial, then analyze


def result(nuisance: str, run: str, instance: int, rng: np.random.Generator):
    """A trial whose per-class eKLD falls with class size (tail level set per method)."""
    cfg = config(nuisance, run, instance)
    t = TRUTH[run]
    log_n = np.log(COUNTS)
    ekld = t["tail"] * (1.0 - 0.1 * (log_n - log_n.min())) + rng.normal(0, 0.02, len(COUNTS))  # falls with size
    acc = np.clip(0.3 + 0.1 * log_n + rng.normal(0, 0.02, len(COUNTS)), 0, 1)
    per_class = [{"class_id": c, "class_rank": c, "train_count": n, "test_count": 20, "accuracy": float(a),
                  "ekld": float(k), "consistency": 0.9} for c, (n, a, k) in enumerate(zip(COUNTS, acc, ekld))]
    epochs = [{"epoch": e, "lr": 0.1, "train_loss": 1.0 / (e + 1), "train_accuracy": 0.5, "val_accuracy": 0.5,
               "val_balanced_accuracy": t["bal"] * (e + 1) / 3, "seconds": 1.0} for e in range(3)]
    metrics = {"accuracy": float(acc.mean()), "balanced_accuracy": t["bal"] + rng.normal(0, 0.01),
               "many_accuracy": 0.9, "medium_accuracy": 0.7, "few_accuracy": t["few"] + rng.normal(0, 0.01),
               "ekld_mean": float(ekld.mean()), "ekld_size_spearman": spearman(COUNTS, ekld)}
    return build_result(cfg, cfg.fingerprint(), metrics, per_class, epochs, train_seconds=1.0, device="cpu")


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.order: list[tuple[str, str]] = []  # (tag, class or id) in document order
        self.first_p = None
        self._p = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.order.append((tag, a.get("id") or a.get("class") or ""))
        self._p = tag == "p" and self.first_p is None

    def handle_data(self, data):
        if self._p:
            self.first_p, self._p = data, False


def test_analyze_writes_and_shows_the_claims(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "study"
    for n in ("background",):
        for run in ("ERM", "RS", "DRS", "DRS+GIT"):  # no oracle trials: claim c cannot be judged
            for i in range(3):
                write_trial(str(root), result(n, run, i, rng))
    rep = analyze([str(root)], out=str(tmp_path / "out"), dpi=60)
    out = Path(rep.out)
    csv = pd.read_csv(out / "claims.csv")
    assert list(csv["claim"].unique()) == list("abcde") and len(csv) == len(rep.tables["claims"])
    v = dict(zip(csv["claim"], csv["verdict"]))
    assert v["a"] == HOLDS and v["c"] == MISSING and v["d"] == HOLDS
    # Claim a's effect is the mean of the per-trial Spearman written to Parquet.
    erm = pd.read_parquet(root / "trials")
    erm = erm[(erm["balance_sampler"] == "none") & ~erm["augment_git"]]
    got = csv[csv["measure"] == "mean Spearman(size, eKLD), ERM"]["effect"].item()
    assert got == pytest.approx(erm["ekld_size_spearman"].mean())
    # 3 instances: the verdicts say they rest on too few units.
    assert csv[csv["claim"] == "a"]["reason"].str.endswith("provisional: 3 units, too few for a reliable interval").all()
    assert not csv[csv["claim"] == "c"]["reason"].str.contains("provisional").any()
    md = (out / "claims.md").read_text()
    assert "| claim | nuisance |" in md and "no oracle trials for nuisance digits / background" in md
    text = rep.text
    assert "The paper's claims" in text and "(c) digits / background: NOT ENOUGH TRIALS" in text
    assert "(a) digits / background: HOLDS (PROVISIONAL: few units)" in text
    assert "4 of these verdicts rest on fewer than 5 units (as few as 3) and are provisional." in rep.findings
    assert text.index("The paper's claims") < text.index("Summary (mean ± std)")
    doc = (out / "report.html").read_text()
    assert "(n=3)<br>mean Spearman(size, eKLD), RS" in doc  # a line per effect in the claims table
    page = _Page()
    page.feed(doc)
    assert page.first_p.startswith("Under ERM, eKLD falls with class size for 1 of 1 nuisance(s)")
    tags = [t for t in page.order if t[0] in ("table", "div")]
    assert tags[0] == ("div", "scroll") and tags[1] == ("table", "claims")  # the claims table comes first
    # Every table sits in a horizontally scrolling box.
    assert sum(t == ("div", "scroll") for t in tags) == sum(t[0] == "table" for t in tags) == len(rep.display)


def test_findings_without_any_judged_claim_fall_back_to_the_trials():
    t = trials(runs=("ERM",)).assign(balance_loss="focal")  # no ERM / RS / DRS / oracle / GIT trials
    long = claims_table(t)
    assert set(long["verdict"]) == {MISSING}
    text = findings(long, t)
    mean = t["ekld_size_spearman"].mean()
    assert text.startswith(f"Mean Spearman(size, eKLD) per method over all trials: focal {mean:+.2f}")
    assert "10 of 10 claim rows lack the trials" in text
