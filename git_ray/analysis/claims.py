"""The paper's claims (METHOD.md, "What the paper reports") checked against a sweep's results.

    long = claims_table(trials)          # numbers: one row per (claim, nuisance, measure)
    short = display_claims(long)         # for people: one row per (claim, nuisance)
    print(findings(long))                # the same in sentences

For each dataset/nuisance found in the trials, five claims:
  a. eKLD falls with class size under ERM, RS and DRS (per-trial Spearman(size, eKLD) < 0);
  b. balancing does not remove it (RS and DRS still negative, intervals overlapping ERM's);
  c. oracle augmentation lowers tail eKLD (oracle / ERM < 1) and changes the slope;
  d. GIT lowers tail eKLD against the same run without GIT;
  e. GIT raises balanced and few-class accuracy against the same run without GIT.
Each measure is a statistic over units (trials, or pairs of trials equal in everything but the
augmentation flag: same instance, seed, method, ratio) with a percentile bootstrap 95% interval
over those units. The bootstrap draws from a generator seeded by (seed, claim, nuisance,
measure), so every row is reproducible on its own, whatever else the results hold.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from git_ray.analysis.tables import (
    GIT_ONLY, ORACLE_ONLY, RUN_COLUMNS, augmentation_label, method_label, to_markdown,
)
from git_ray.results import CONFIG_COLUMNS

HOLDS, FAILS, MISSING = "holds", "does not hold", "not enough trials"
N_BOOT = 2000
LEVEL = 0.95
MIN_UNITS = 2  # an interval over one unit is a point, not an interval
# Below this many units a percentile bootstrap interval is too narrow (it cannot reach past the
# values observed): verdicts on fewer say they are provisional.
FEW_UNITS = 5

# (method label, augmentation label) of the three sampling methods claims a-c compare. RS and
# DRS are taken with plain cross-entropy and no reweighting, as in the paper's invariance study,
# so that only the sampling differs from ERM.
METHODS = {"ERM": ("ce", "none"), "RS": ("ce+resample", "none"), "DRS": ("ce+drs", "none")}
ORACLE = ("ce", "oracle")

STATEMENTS = {
    "a": "eKLD falls with class size under ERM, RS and DRS",
    "b": "balancing (RS, DRS) does not remove the fall: still below 0, not above ERM",
    "c": "oracle augmentation lowers tail eKLD",
    "d": "GIT lowers tail eKLD",
    "e": "GIT raises balanced and few-class accuracy",
}
EFFECT_COLUMN = "effect [95% CI] (n units)"  # display_claims' cell of effects
COLUMNS = ["claim", "nuisance", "statement", "measure", "effect", "ci_low", "ci_high", "n", "verdict", "reason"]


@dataclass(frozen=True)
class Estimate:
    """A statistic over n units and its bootstrap interval (NaN when n < MIN_UNITS)."""

    effect: float
    low: float
    high: float
    n: int

    @property
    def ok(self) -> bool:
        return self.n >= MIN_UNITS and not math.isnan(self.low)


def _rng(seed: int, *labels: str) -> np.random.Generator:
    # crc32 (not hash()) so the stream does not change with PYTHONHASHSEED.
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) for s in labels)])


def bootstrap(groups: Sequence[np.ndarray], stat: Callable[..., np.ndarray], rng: np.random.Generator,
              n_boot: int = N_BOOT, level: float = LEVEL) -> Estimate:
    """`stat` on the groups and its percentile interval from resampling each group's rows with
    replacement, independently per group (one group of paired rows for a paired statistic).

    groups: arrays of shape (n_i, k_i), one row per unit. stat: takes one (B, n_i, k_i) array per
    group and returns shape (B,); it is called on the data itself with B = 1.
    """
    groups = [np.asarray(g, dtype=float).reshape(len(g), -1) for g in groups]
    n = min(len(g) for g in groups)
    effect = float(stat(*(g[None] for g in groups))[0]) if n else math.nan
    if n < MIN_UNITS:
        return Estimate(effect, math.nan, math.nan, n)
    draws = [g[rng.integers(0, len(g), size=(n_boot, len(g)))] for g in groups]  # (B, n_i, k_i) each
    dist = stat(*draws)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(dist, [tail, 1.0 - tail])
    return Estimate(effect, float(low), float(high), n)


def _mean(x: np.ndarray) -> np.ndarray:  # (B, n, 1) -> (B,)
    return x[..., 0].mean(axis=1)


def _diff_means(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # two unpaired groups
    return a[..., 0].mean(axis=1) - b[..., 0].mean(axis=1)


def _paired_diff(x: np.ndarray) -> np.ndarray:  # (B, n, 2): with, without
    return (x[..., 0] - x[..., 1]).mean(axis=1)


def _ratio_of_means(x: np.ndarray) -> np.ndarray:  # (B, n, 2): with, without
    return x[..., 0].mean(axis=1) / x[..., 1].mean(axis=1)


# ---------------------------------------------------------------------------------------------
# Selecting and pairing trials


def scope_names(trials: pd.DataFrame) -> pd.Series:
    """`source / nuisance`: the unit a claim is judged on (sweeps and ratios pooled)."""
    return trials["dataset_source"].astype(str) + " / " + trials["dataset_nuisance"].astype(str)


def _labelled(trials: pd.DataFrame) -> pd.DataFrame:
    # A trial id is a hash of the config: the same id in two sweeps is one computation, not two
    # independent units.
    df = trials.drop_duplicates("trial_id").copy() if "trial_id" in trials else trials.copy()
    if "method" not in df:
        df["method"] = method_label(df)
    if "augmentation" not in df:
        df["augmentation"] = augmentation_label(df)
    return df


def _select(df: pd.DataFrame, label: tuple[str, str]) -> pd.DataFrame:
    return df[(df["method"] == label[0]) & (df["augmentation"] == label[1])]


def pair_key_columns(df: pd.DataFrame, flag: str) -> list[str]:
    """The config columns a pair must agree on: all but the flag, the settings that only matter
    with the flag on, and where / how fast a trial ran."""
    only = set(GIT_ONLY) if flag == "augment_git" else set(ORACLE_ONLY) if flag == "augment_oracle" else set()
    skip = only | set(RUN_COLUMNS) | {flag}
    return [c for c in CONFIG_COLUMNS if c in df and c not in skip]


def _key_str(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return repr(float(v)) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else str(v)


def paired(with_: pd.DataFrame, without: pd.DataFrame, flag: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per unit (a configuration run both with and without `flag`): `<metric>_with`,
    `<metric>_without`. Several trials of one side of a unit (e.g. two GIT settings) are averaged."""
    keys = pair_key_columns(pd.concat([with_, without]), flag)

    def side(df: pd.DataFrame, suffix: str) -> pd.DataFrame:
        # String keys: NaN, None and mixed dtypes (1 vs 1.0 from another file) compare equal.
        k = ["\x1f".join(map(_key_str, r)) for r in df[keys].itertuples(index=False)]
        return (df.assign(_key=k).groupby("_key")[list(metrics)].mean()
                .rename(columns={m: f"{m}_{suffix}" for m in metrics}))

    if with_.empty or without.empty:
        return pd.DataFrame(columns=[f"{m}_{s}" for m in metrics for s in ("with", "without")])
    return side(with_, "with").join(side(without, "without"), how="inner").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# The claims


def _row(claim: str, scope: str, measure: str, est: Estimate | None, verdict: str, reason: str) -> dict:
    e = est or Estimate(math.nan, math.nan, math.nan, 0)
    return {"claim": claim, "nuisance": scope, "statement": STATEMENTS[claim], "measure": measure,
            "effect": e.effect, "ci_low": e.low, "ci_high": e.high, "n": e.n, "verdict": verdict, "reason": reason}


def _fmt(x: float, signed: bool = True) -> str:
    return "nan" if math.isnan(x) else f"{x:+.3g}" if signed else f"{x:.3g}"


def _interval(e: Estimate, signed: bool = True) -> str:
    """`-0.55 [-0.61, -0.49]`; a ratio unsigned (`0.41 [0.38, 0.44]`)."""
    return f"{_fmt(e.effect, signed)} [{_fmt(e.low, signed)}, {_fmt(e.high, signed)}]"


def _spearmans(df: pd.DataFrame, scope: str, seed: int, n_boot: int) -> tuple[dict[str, Estimate], dict[str, str]]:
    """Mean Spearman(size, eKLD) of each sampling method with an interval over trials; and why
    each absent method is absent."""
    est, absent = {}, {}
    for name, label in METHODS.items():
        vals = _select(df, label)["ekld_size_spearman"].dropna().to_numpy()
        if len(vals) < MIN_UNITS:
            absent[name] = f"no {name} trials" if len(vals) == 0 else f"only {len(vals)} {name} trial"
            continue
        est[name] = bootstrap([vals], _mean, _rng(seed, "a", scope, name), n_boot)
    return est, absent


def claim_a(df: pd.DataFrame, scope: str, est: dict[str, Estimate], absent: dict[str, str]) -> list[dict]:
    """Holds when every method present has an interval below 0. A missing method is left out and
    named in the reason; with none of ERM, RS, DRS there is nothing to judge."""
    if not est:
        return [_row("a", scope, "mean Spearman(size, eKLD)", None, MISSING,
                     f"{', '.join(absent.values())} for nuisance {scope}")]
    above = [m for m, e in est.items() if e.high >= 0]
    verdict = FAILS if above else HOLDS
    reason = (f"interval reaches 0 or above for {', '.join(above)}" if above
              else f"interval below 0 for {', '.join(est)}")
    if absent:
        reason += f"; judged without {', '.join(absent)} ({', '.join(absent.values())}, {MIN_UNITS} needed)"
    return [_row("a", scope, f"mean Spearman(size, eKLD), {m}", e, verdict, reason) for m, e in est.items()]


def claim_b(df: pd.DataFrame, scope: str, est: dict[str, Estimate], absent: dict[str, str], seed: int,
            n_boot: int) -> list[dict]:
    """RS and DRS (those present) have intervals below 0 and not above ERM's (overlapping it, or
    lower). Effect: their mean Spearman minus ERM's (unpaired bootstrap over the two groups)."""
    balanced = [m for m in ("RS", "DRS") if m in est]
    if "ERM" not in est or not balanced:
        missing = [f"no {m} trials" for m in ("ERM",) if m not in est] or ["no RS or DRS trials"]
        return [_row("b", scope, "mean Spearman, balanced minus ERM", None, MISSING,
                     f"{'; '.join(missing)} (at least {MIN_UNITS} each) for nuisance {scope}")]
    erm = est["ERM"]
    rows, bad = [], []
    spear = {m: _select(df, METHODS[m])["ekld_size_spearman"].dropna().to_numpy() for m in ("ERM", *balanced)}
    for m in balanced:
        e = est[m]
        if e.high >= 0:
            bad.append(f"{m} interval reaches 0 or above")
        # One-sided: balancing "removes" the fall only if it leaves a weaker (higher) Spearman; an
        # interval wholly below ERM's is an even steeper fall, which the claim does not exclude.
        if e.low > erm.high:
            bad.append(f"{m} interval {_interval(e)} lies above ERM's {_interval(erm)} (a weaker fall)")
        diff = bootstrap([spear[m], spear["ERM"]], _diff_means, _rng(seed, "b", scope, m), n_boot)
        rows.append((m, diff))
    verdict = FAILS if bad else HOLDS
    reason = "; ".join(bad) if bad else f"{' and '.join(balanced)} below 0, not above ERM's interval"
    if len(balanced) < 2:
        reason += f"; {absent['DRS' if balanced == ['RS'] else 'RS']}"
    return [_row("b", scope, f"mean Spearman, {m} minus ERM", d, verdict, reason) for m, d in rows]


def claim_c(df: pd.DataFrame, scope: str, seed: int, n_boot: int) -> list[dict]:
    """Tail eKLD oracle / ERM over pairs (ratio of means; holds when its interval is below 1), and
    the change in Spearman (oracle minus ERM), reported only."""
    erm, oracle = _select(df, METHODS["ERM"]), _select(df, ORACLE)
    measures = ("tail eKLD ratio, oracle / ERM", "Spearman(size, eKLD), oracle minus ERM")
    if erm.empty or oracle.empty:
        what = " and ".join(w for w, d in (("no oracle trials", oracle), ("no ERM trials", erm)) if d.empty)
        return [_row("c", scope, measures[0], None, MISSING, f"{what} for nuisance {scope}")]
    p = paired(oracle, erm, "augment_oracle", ("ekld_tail", "ekld_size_spearman"))
    tail = p[["ekld_tail_with", "ekld_tail_without"]].dropna().to_numpy()
    if len(tail) < MIN_UNITS:
        return [_row("c", scope, measures[0], None, MISSING,
                     f"fewer than {MIN_UNITS} paired units ({len(tail)}): oracle and ERM trials of nuisance "
                     f"{scope} must share instance, seed and every other setting")]
    ratio = bootstrap([tail], _ratio_of_means, _rng(seed, "c", scope, "ratio"), n_boot)
    slope = bootstrap([p[["ekld_size_spearman_with", "ekld_size_spearman_without"]].dropna().to_numpy()],
                      _paired_diff, _rng(seed, "c", scope, "slope"), n_boot)
    verdict = HOLDS if ratio.high < 1 else FAILS
    reason = ("interval below 1" if verdict == HOLDS else "interval reaches 1 or above") + "; slope change reported only"
    return [_row("c", scope, measures[0], ratio, verdict, reason), _row("c", scope, measures[1], slope, verdict, reason)]


def _git_pairs(df: pd.DataFrame, metrics: Sequence[str]) -> tuple[pd.DataFrame | None, str]:
    git, plain = df[df["augment_git"].astype(bool)], df[~df["augment_git"].astype(bool)]
    if git.empty or plain.empty:
        what = "no GIT trials" if git.empty else "no trials without GIT"
        return None, what
    return paired(git, plain, "augment_git", metrics), f"{len(git)} GIT trials"


def claim_d(df: pd.DataFrame, scope: str, seed: int, n_boot: int) -> list[dict]:
    """Mean paired difference of tail eKLD, GIT minus the same run without; holds below 0."""
    measure = "tail eKLD, GIT minus no GIT (paired)"
    p, what = _git_pairs(df, ("ekld_tail",))
    if p is None:
        return [_row("d", scope, measure, None, MISSING, f"{what} for nuisance {scope}")]
    units = p[["ekld_tail_with", "ekld_tail_without"]].dropna().to_numpy()
    if len(units) < MIN_UNITS:
        return [_row("d", scope, measure, None, MISSING, _too_few(units, what, scope))]
    est = bootstrap([units], _paired_diff, _rng(seed, "d", scope), n_boot)
    verdict = HOLDS if est.high < 0 else FAILS
    reason = "interval below 0" if verdict == HOLDS else "interval reaches 0 or above"
    return [_row("d", scope, measure, est, verdict, reason)]


def _too_few(units: np.ndarray, what: str, scope: str) -> str:
    return (f"fewer than {MIN_UNITS} paired units ({len(units)}; {what}): a GIT trial pairs with the trial of "
            f"nuisance {scope} that has the same instance, seed, method and every other setting but GIT")


def claim_e(df: pd.DataFrame, scope: str, seed: int, n_boot: int) -> list[dict]:
    """Paired differences of balanced accuracy and few-class accuracy; holds when both are above 0."""
    names = {"balanced_accuracy": "balanced accuracy, GIT minus no GIT (paired)",
             "few_accuracy": "few-class accuracy, GIT minus no GIT (paired)"}
    p, what = _git_pairs(df, tuple(names))
    if p is None:
        return [_row("e", scope, names["balanced_accuracy"], None, MISSING, f"{what} for nuisance {scope}")]
    est, short = {}, []
    for m, measure in names.items():
        units = p[[f"{m}_with", f"{m}_without"]].dropna().to_numpy()
        if len(units) < MIN_UNITS:
            why = _too_few(units, what, scope)
            if m == "few_accuracy" and len(p) >= MIN_UNITS:
                why = ("few-class accuracy is undefined in these trials (no class has fewer training images "
                       "than eval.few_threshold)")
            short.append(why)
            continue
        est[measure] = bootstrap([units], _paired_diff, _rng(seed, "e", scope, m), n_boot)
    if short:
        return [_row("e", scope, m, e, MISSING, "; ".join(short)) for m, e in est.items()] or \
               [_row("e", scope, names["balanced_accuracy"], None, MISSING, "; ".join(short))]
    not_up = [m.split(",")[0] for m, e in est.items() if e.low <= 0]
    verdict = FAILS if not_up else HOLDS
    reason = f"interval reaches 0 or below for {' and '.join(not_up)}" if not_up else "both intervals above 0"
    return [_row("e", scope, m, e, verdict, reason) for m, e in est.items()]


def claims_table(trials: pd.DataFrame, *, seed: int = 0, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Every claim for every dataset/nuisance in `trials`: one row per (claim, nuisance, measure)
    with effect, ci_low, ci_high (bootstrap 95%), n (units), verdict and reason.

    trials: the trials table (with or without add_derived's method / augmentation columns).
    A claim that cannot be judged gets one row with verdict "not enough trials" and the reason.
    """
    df = _labelled(trials)
    df = df.assign(_scope=scope_names(df)) if len(df) else df.assign(_scope=pd.Series([], dtype=str))
    rows: list[dict] = []
    for scope, d in df.groupby("_scope", sort=True):
        est, absent = _spearmans(d, scope, seed, n_boot)
        rows += claim_a(d, scope, est, absent)
        rows += claim_b(d, scope, est, absent, seed, n_boot)
        rows += claim_c(d, scope, seed, n_boot)
        rows += claim_d(d, scope, seed, n_boot)
        rows += claim_e(d, scope, seed, n_boot)
    long = pd.DataFrame(rows, columns=COLUMNS)
    judged = long["verdict"] != MISSING
    fewest = long[judged].groupby(["claim", "nuisance"])["n"].transform("min")
    few = fewest[fewest < FEW_UNITS]
    long.loc[few.index, "reason"] = [f"{r}; provisional: {n} units, too few for a reliable interval"
                                     for r, n in zip(long.loc[few.index, "reason"], few)]
    return long


def verdicts(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, nuisance): its verdict and reason."""
    return long.groupby(["claim", "nuisance"], sort=True)[["verdict", "reason"]].first().reset_index()


# ---------------------------------------------------------------------------------------------
# For people


def display_claims(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, nuisance): the effects with their intervals and units as one cell."""
    rows = []
    for (claim, scope), g in long.groupby(["claim", "nuisance"], sort=True):
        effects = [f"{m}: {_interval(Estimate(r.effect, r.ci_low, r.ci_high, r.n), 'ratio' not in m)} (n={r.n})"
                   for m, r in zip(g["measure"], g.itertuples()) if r.n > 0]
        rows.append({"claim": claim, "nuisance": scope, "statement": STATEMENTS[claim],
                     EFFECT_COLUMN: "; ".join(effects) or "-",
                     "verdict": g["verdict"].iloc[0], "reason": g["reason"].iloc[0]})
    return pd.DataFrame(rows, columns=["claim", "nuisance", "statement", EFFECT_COLUMN, "verdict", "reason"])


def claims_markdown(long: pd.DataFrame) -> str:
    """claims.md: a short legend and the table."""
    return ("# The paper's claims in these results\n\n"
            f"Effect [bootstrap {LEVEL:.0%} interval over seeds and instances] (n units: trials, or pairs of "
            "trials that differ only in the augmentation). Verdicts: holds / does not hold / not enough trials. "
            "With few units (under about 10) a percentile bootstrap interval is too narrow: it cannot reach "
            "past the values observed; read such verdicts as provisional.\n\n"
            + to_markdown(display_claims(long)))


def _scope_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def findings(long: pd.DataFrame, trials: pd.DataFrame | None = None) -> str:
    """The findings in sentences, from the claims table (and, when no claim can be judged, from
    the trials' own Spearman figures)."""
    sentences = []
    # One data source: name the nuisances alone ("background", not "glyphs / background").
    sources = {n.split(" / ", 1)[0] for n in long["nuisance"]}
    of_source = f" of {next(iter(sources))}" if len(sources) == 1 else ""
    if len(sources) == 1:
        long = long.assign(nuisance=long["nuisance"].str.split(" / ", n=1).str[-1])
    judged = long[long["verdict"] != MISSING]
    nuis = sorted(long["nuisance"].unique())
    a = judged[judged["claim"] == "a"]
    parts = []
    for m in METHODS:
        r = a[a["measure"].str.endswith(f", {m}")]
        if r.empty:
            continue
        each = ", ".join(f"{v:+.2f} on {s}" for s, v in zip(r["nuisance"], r["effect"]))
        if not parts:
            parts.append(f"Under {m}, eKLD falls with class size for {(r['ci_high'] < 0).sum()} of {len(r)} "
                         f"nuisance(s){of_source} (mean Spearman(size, eKLD) {each})")
        else:
            parts.append(f"under {m} for {(r['ci_high'] < 0).sum()} of {len(r)} ({each})")
    if parts:
        sentences.append("; ".join(parts) + ".")
    b = verdicts(judged[judged["claim"] == "b"])
    if len(b):
        held = b[b["verdict"] == HOLDS]["nuisance"].tolist()
        sentences.append(f"Balancing does not remove the fall (RS and DRS below 0 and not above ERM) for "
                         f"{len(held)} of {len(b)} nuisance(s)" + (f": {_scope_list(held)}." if held else "."))
    c = judged[judged["measure"].str.startswith("tail eKLD ratio")]
    if len(c):
        each = ", ".join(f"{v:.2f} on {s}" for s, v in zip(c["nuisance"], c["effect"]))
        sentences.append(f"Oracle augmentation multiplies ERM's tail eKLD by {each} "
                         f"(below 1 with confidence for {(c['ci_high'] < 1).sum()} of {len(c)}).")
    d = judged[judged["claim"] == "d"]
    if len(d):
        each = ", ".join(f"{v:+.2f} on {s}" for s, v in zip(d["nuisance"], d["effect"]))
        sentences.append(f"GIT changes tail eKLD by {each} against the same runs without it "
                         f"(lower with confidence for {(d['ci_high'] < 0).sum()} of {len(d)}).")
    e = judged[judged["claim"] == "e"]
    if len(e):
        ba = e[e["measure"].str.startswith("balanced")]
        each = ", ".join(f"{100 * v:+.1f} points on {s}" for s, v in zip(ba["nuisance"], ba["effect"]))
        ev = verdicts(e)
        sentences.append(f"GIT changes balanced accuracy by {each}; it raises both balanced and few-class "
                         f"accuracy with confidence for {(ev['verdict'] == HOLDS).sum()} of {len(ev)}.")
    few = judged[judged["reason"].str.contains("provisional:", regex=False)]
    if len(few):
        sentences.append(f"{len(verdicts(few))} of these verdicts rest on fewer than {FEW_UNITS} units "
                         f"(as few as {few['n'].min()}) and are provisional.")
    missing = verdicts(long[long["verdict"] == MISSING])
    if len(missing):
        sentences.append(f"{len(missing)} of {len(verdicts(long))} claim rows lack the trials to judge them "
                         "(see the reasons in the claims table).")
    if judged.empty and trials is not None and "ekld_size_spearman" in trials and len(trials):
        df = _labelled(trials).assign(label=lambda x: x["method"].where(
            x["augmentation"] == "none", x["method"] + " +" + x["augmentation"]))
        m = df.groupby("label")["ekld_size_spearman"].mean().dropna()
        if len(m):
            sentences.insert(0, "Mean Spearman(size, eKLD) per method over all trials: "
                             + ", ".join(f"{k} {v:+.2f}" for k, v in m.items())
                             + " (negative: small classes are less invariant).")
    if not sentences:
        return f"No claim can be judged from these results ({len(nuis)} nuisance(s))."
    return " ".join(sentences)
