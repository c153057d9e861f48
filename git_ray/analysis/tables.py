"""Summary tables from the results: metrics per configuration (seeds and instances averaged),
and the effect of GIT (and of the oracle) against the same configuration without it.

All functions take the DataFrames of `git_ray.analysis.load` and return DataFrames; formatting
for people (mean ± std strings, Markdown) is separate from the numbers.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from git_ray.results import CONFIG_COLUMNS, head_tail_mean

# Averaged over: they pick a replicate, not a method.
REPLICATE_COLUMNS = ("seed", "dataset_instance", "dataset_split_seed", "generator_seed")
# Where and how fast a trial ran, not what it computed.
RUN_COLUMNS = ("dataset_root", "generator_cache", "train_device", "train_threads", "eval_batch_size",
               "eval_forward_batch", "generator_checkpoint_every")
# Settings that only matter with GIT on (resp. the oracle on): a GIT run is compared with the
# run without GIT whatever these say.
GIT_ONLY = ("augment_gen_frac", "augment_git_start", "augment_style_scale", "augment_git_threshold",
            *(c for c in CONFIG_COLUMNS if c.startswith("generator_")))
ORACLE_ONLY = ("augment_nuisance_strength",)

METRICS = ("accuracy", "balanced_accuracy", "many_accuracy", "medium_accuracy", "few_accuracy",
           "tail_accuracy", "ekld_mean", "ekld_tail", "ekld_head", "ekld_size_spearman")
# Lower is better for these (printed deltas read "negative = GIT helps").
LOWER_IS_BETTER = ("ekld_mean", "ekld_tail", "ekld_head", "ekld_size_spearman")


def add_derived(trials: pd.DataFrame, per_class: pd.DataFrame) -> pd.DataFrame:
    """Trials plus `tail_accuracy` / `head_accuracy` (mean accuracy of the smallest / largest third
    of classes, as ekld_tail / ekld_head), `method` and `augmentation` labels."""
    out = trials.copy()
    # The same trial id can appear in several sweeps (a copied or re-run sweep): key by both.
    key = ["sweep", "trial_id"] if "sweep" in trials and "sweep" in per_class else ["trial_id"]
    rows = []
    for k, g in per_class.sort_values([*key, "class_rank"]).groupby(key, sort=False):
        rows.append((*k, *head_tail_mean(g["train_count"].tolist(), g["accuracy"].tolist())))
    ht = pd.DataFrame(rows, columns=[*key, "head_accuracy", "tail_accuracy"])
    out = out.drop(columns=["head_accuracy", "tail_accuracy"], errors="ignore").merge(ht, on=key, how="left")
    out["head_accuracy"] = out["head_accuracy"].astype(float)
    out["tail_accuracy"] = out["tail_accuracy"].astype(float)
    out["method"] = method_label(out)
    out["augmentation"] = augmentation_label(out)
    return out


def method_label(df: pd.DataFrame) -> pd.Series:
    """The balancing method as `loss[+sampler][+reweight]`, e.g. ce, ce+drs, ldam+drs+drw."""
    def one(r) -> str:
        parts = [str(r["balance_loss"])]
        parts += [str(r[c]) for c in ("balance_sampler", "balance_reweight") if str(r[c]) != "none"]
        return "+".join(parts)
    return df.apply(one, axis=1) if len(df) else pd.Series([], dtype=object)


def augmentation_label(df: pd.DataFrame) -> pd.Series:
    """none, GIT, oracle or GIT+oracle."""
    def one(r) -> str:
        on = [n for n, c in (("GIT", "augment_git"), ("oracle", "augment_oracle")) if bool(r[c])]
        return "+".join(on) or "none"
    return df.apply(one, axis=1) if len(df) else pd.Series([], dtype=object)


def group_keys(trials: pd.DataFrame) -> list[str]:
    """Config columns whose values differ across trials (replicate and run columns left out),
    and `sweep` when there are several sweeps."""
    keys = ["sweep"] if "sweep" in trials and trials["sweep"].nunique() > 1 else []
    skip = set(REPLICATE_COLUMNS) | set(RUN_COLUMNS)
    for c in CONFIG_COLUMNS:
        if c in trials and c not in skip and trials[c].nunique(dropna=False) > 1:
            keys.append(c)
    return keys


def _metrics(df: pd.DataFrame) -> list[str]:
    return [m for m in METRICS if m in df]


def summary_table(trials: pd.DataFrame, keys: list[str] | None = None) -> pd.DataFrame:
    """Mean, std and count of every metric per group of `keys` (default: `group_keys`);
    columns `<metric>_mean`, `<metric>_std`, `<metric>_count`, plus `n_trials`."""
    keys = group_keys(trials) if keys is None else keys
    df = trials if keys else trials.assign(group="all")
    keys = keys or ["group"]
    g = df.groupby(keys, dropna=False, sort=True)
    stats = g[_metrics(df)].agg(["mean", "std", "count"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    stats.insert(0, "n_trials", g.size())
    return stats.reset_index()


def effect_table(trials: pd.DataFrame, flag: str = "augment_git") -> pd.DataFrame | None:
    """Each configuration with `flag` on against the same configuration with it off (seeds
    averaged on both sides): `<metric>_with`, `<metric>_without`, `<metric>_delta` (with minus
    without). None when the results do not hold both sides."""
    keys = group_keys(trials)
    if flag not in keys:
        return None
    only = GIT_ONLY if flag == "augment_git" else ORACLE_ONLY if flag == "augment_oracle" else ()
    side_keys = [k for k in keys if k != flag]
    base_keys = [k for k in side_keys if k not in only]
    metrics = _metrics(trials)
    on = trials[trials[flag].astype(bool)]
    off = trials[~trials[flag].astype(bool)]

    def side(df: pd.DataFrame, by: list[str], suffix: str) -> pd.DataFrame:
        if not by:
            m = df[metrics].mean().to_frame().T
            m.insert(0, "n", len(df))
        else:
            g = df.groupby(by, dropna=False, sort=True)
            m = g[metrics].mean()
            m.insert(0, "n", g.size())
            m = m.reset_index()
        return m.rename(columns={c: f"{c}_{suffix}" for c in ["n", *metrics]})

    w, wo = side(on, side_keys, "with"), side(off, base_keys, "without")
    both = w.merge(wo, on=base_keys, how="inner") if base_keys else w.merge(wo, how="cross")
    if both.empty:
        return None
    for m in metrics:
        both[f"{m}_delta"] = both[f"{m}_with"] - both[f"{m}_without"]
    return both


# ---------------------------------------------------------------------------------------------
# Formatting for people


def _num(x: float, metric: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if metric.startswith("ekld") and "spearman" not in metric else f"{x:.3f}"


def display_summary(summary: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`mean ± std` strings per metric, metrics with no value at all dropped."""
    out = summary[[*keys, "n_trials"]].copy()
    for m in METRICS:
        if f"{m}_mean" not in summary or summary[f"{m}_mean"].isna().all():
            continue
        out[m] = [f"{_num(a, m)} ± {_num(b, m)}" if not pd.isna(b) else _num(a, m)
                  for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    return out


def display_effect(effect: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Keys, trial counts and the per-metric deltas as signed strings."""
    out = effect[[k for k in keys if k in effect] + ["n_with", "n_without"]].copy()
    for m in METRICS:
        col = f"{m}_delta"
        if col in effect and not effect[col].isna().all():
            out[f"Δ {m}"] = [("-" if pd.isna(v) else f"{v:+.4g}") for v in effect[col]]
    return out


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if np.isnan(v) else f"{v:.6g}"
        return "-" if v is None else str(v).replace("|", "\\|")
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"
