"""Figures from the results (matplotlib, Agg backend): each function takes DataFrames and returns
a Figure; nothing here computes a number that is not also in the tables or the Parquet files.

- eKLD per class against training class size (log x), one line per balancing method (+ GIT /
  oracle) with its mean Spearman in the legend, one panel per (dataset/nuisance, imbalance
  setting): the paper's central plot.
- per-class test accuracy against class size, laid out the same way.
- the tail: eKLD and accuracy of the smallest third of classes, with and without GIT / oracle.
- learning curves: validation balanced accuracy per epoch.
"""
from __future__ import annotations

import io
import re

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.lines  # noqa: E402,F401
import matplotlib.patches  # noqa: E402,F401
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from git_ray.metrics.stats import spearman  # noqa: E402

# Beyond this many distinct class sizes, sizes are pooled into log-spaced bins.
MAX_DISTINCT_SIZES = 12
N_BINS = 10


def curve_label(df: pd.DataFrame) -> pd.Series:
    """`method` alone, or `method +GIT` / `method +oracle` for augmented runs."""
    return df["method"].where(df["augmentation"] == "none", df["method"] + " +" + df["augmentation"])


# The long-tail profile settings: trials that differ in these are never pooled into one panel
# (a ratio-10 and a ratio-100 curve over the same class sizes would mean nothing averaged).
PROFILE_COLUMNS = {"dataset_profile": "{}", "dataset_imbalance_ratio": "ratio {:g}",
                   "dataset_zipf_alpha": "alpha {:g}", "dataset_max_per_class": "max {:g}",
                   "dataset_min_per_class": "min {:g}"}
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def profile_names(df: pd.DataFrame) -> pd.Series:
    """`ratio 50` (etc.): the profile settings that vary across `df`, or "" when none does."""
    cols = [c for c in PROFILE_COLUMNS if c in df and df[c].nunique(dropna=False) > 1]
    if not cols or not len(df):
        return pd.Series("", index=df.index)
    def one(r) -> str:
        return ", ".join(PROFILE_COLUMNS[c].format(r[c]) if not pd.isna(r[c]) else f"{c} -" for c in cols)
    return df.apply(one, axis=1)


def natural_key(v: object) -> tuple:
    """Sort key that orders numbers inside names by value: "ratio 10" < "ratio 50" < "ratio 100"."""
    if isinstance(v, tuple):
        return tuple(natural_key(x) for x in v)
    parts = re.split(r"(\d+(?:\.\d+)?)", str(v))
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


def _panels(df: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """One panel per (dataset/nuisance, profile setting) (and per sweep when several sweeps share
    a nuisance), keyed (row name, column name), in natural order."""
    groups = df.groupby([panel_names(df), profile_names(df)], sort=False)
    return sorted(groups, key=lambda kv: natural_key(kv[0]))


def _title(key: tuple[str, str]) -> str:
    return f"{key[0]}, {key[1]}" if key[1] else key[0]


def curve_styles(labels: list[str]) -> dict[str, dict]:
    """A colour, a dash pattern and a marker per curve label: lines that overlap stay apart."""
    return {lab: dict(color=plt.cm.tab10(i % 10), linestyle=LINESTYLES[i % len(LINESTYLES)],
                      marker=MARKERS[i % len(MARKERS)]) for i, lab in enumerate(sorted(labels))}


def _grid(keys: list[tuple], title: str, width: float = 4.2, height: float = 3.4,
          legend_w: float = 0.0, right: float = 0.25, max_cols: int = 4) -> tuple[Figure, list]:
    """Panels with fixed margins (in inches; tight_layout on log axes costs seconds per figure):
    a row per dataset/nuisance and a column per profile setting when the profile varies (2-4
    settings, up to `max_cols`), else up to 3 panels a row. `legend_w` inches right of each panel
    hold its legend; `right` inches right of the last column hold a figure legend."""
    cols_named = sorted({k[1] for k in keys}, key=natural_key)
    if 2 <= len(cols_named) <= max_cols:
        rows_named = sorted({k[0] for k in keys}, key=natural_key)
        cols, rows = len(cols_named), len(rows_named)
        where = [(rows_named.index(r), cols_named.index(c)) for r, c in keys]
    else:
        cols = min(len(keys), 3)
        rows = -(-len(keys) // cols)
        where = [divmod(i, cols) for i in range(len(keys))]
    top, bottom, left, gap_h = 0.95, 0.6, 0.75, 0.75  # inches
    gap_w = 0.75 + legend_w
    w = left + cols * width + (cols - 1) * gap_w + legend_w + right
    h = top + rows * height + (rows - 1) * gap_h + bottom
    fig = plt.figure(figsize=(w, h))
    axes = []
    for r, c in where:
        x0 = left + c * (width + gap_w)
        y0 = h - top - (r + 1) * height - r * gap_h
        axes.append(fig.add_axes((x0 / w, y0 / h, width / w, height / h)))
    fig.suptitle(title, fontsize=11)
    return fig, axes


def size_bins(sizes: pd.Series) -> pd.Series:
    """A representative class size for each row: itself when there are few distinct sizes,
    else the geometric mean of the sizes in its log-spaced bin (not the bin's centre: with a floor
    of 5 images, many classes sit at exactly 5, and their point belongs there)."""
    distinct = np.unique(sizes)
    if len(distinct) <= MAX_DISTINCT_SIZES:
        return sizes.astype(float)
    edges = np.geomspace(distinct.min(), distinct.max() * 1.000001, N_BINS + 1)
    idx = np.clip(np.searchsorted(edges, sizes, side="right") - 1, 0, N_BINS - 1)
    log = pd.Series(np.log(sizes.to_numpy(dtype=float)), index=sizes.index)
    return np.exp(log.groupby(idx).transform("mean"))


def size_curve(per_class: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean and std of `value` per (curve label, size bin): the numbers behind one panel."""
    df = per_class.assign(label=curve_label(per_class), size=size_bins(per_class["train_count"]))
    return (df.groupby(["label", "size"])[value].agg(["mean", "std", "count"]).reset_index()
            .sort_values(["label", "size"]))


def size_spearman(per_class: pd.DataFrame, value: str) -> pd.Series:
    """Mean over trials of Spearman(train count, `value`) per curve label; for eKLD each trial's
    figure is its trials row's ekld_size_spearman."""
    key = ["sweep", "trial_id"] if "sweep" in per_class else ["trial_id"]
    df = per_class.assign(label=curve_label(per_class))
    per_trial = [(lab, spearman(g["train_count"].to_numpy(float), g[value].to_numpy(float)))
                 for (*_, lab), g in df.groupby([*key, "label"], sort=False)]
    return pd.DataFrame(per_trial, columns=["label", "rho"]).groupby("label")["rho"].mean()


def fig_vs_class_size(per_class: pd.DataFrame, value: str, ylabel: str, title: str, short: str) -> Figure:
    """`value` per class against training class size, a panel per (nuisance, profile setting):
    binned mean line, ±1 std band, raw points; the legend (beside the panel) gives each line's
    mean per-trial Spearman(size, value)."""
    panels = _panels(per_class)
    fig, axes = _grid([k for k, _ in panels], title, legend_w=2.0)
    styles = curve_styles(list(curve_label(per_class).unique()))
    for ax, (key, df) in zip(axes, panels):
        curve = size_curve(df, value)
        raw = df.assign(label=curve_label(df))
        rho = size_spearman(df, value)
        for lab, c in curve.groupby("label"):
            st = styles[lab]
            pts = raw[raw["label"] == lab]
            ax.scatter(pts["train_count"], pts[value], s=5, alpha=0.2, color=st["color"], marker=st["marker"],
                       linewidths=0)
            ax.plot(c["size"], c["mean"], ms=4, lw=1.4, **st, label=f"{lab} (ρ {rho.get(lab, np.nan):+.2f})")
            sd = c["std"].fillna(0.0)
            low = c["mean"] - sd
            if (df[value] >= 0).all():  # eKLD and accuracy cannot go below 0; neither should the band
                low = low.clip(lower=0.0)
            ax.fill_between(c["size"], low, c["mean"] + sd, color=st["color"], alpha=0.1)
        ax.set_xscale("log")
        # Ticks at 1, 2, 5 x 10^k: a panel spanning one decade (ratio 10) still gets several.
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        # Plain numbers (1, 10, 100) read better than 10^k and skip mathtext, which is slow.
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training images in the class (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(_title(key), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=f"method (ρ: mean Spearman\nof size and {short} per trial)",
                  title_fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    return fig


def fig_ekld_vs_size(per_class: pd.DataFrame) -> Figure:
    return fig_vs_class_size(per_class, "ekld", "eKLD (lower = more invariant)",
                             "Invariance vs class size: eKLD per class\n"
                             "(mean ± std over classes of that size and seeds)", "eKLD")


def fig_accuracy_vs_size(per_class: pd.DataFrame) -> Figure:
    return fig_vs_class_size(per_class, "accuracy", "test accuracy of the class",
                             "Per-class test accuracy vs class size", "accuracy")


def panel_names(df: pd.DataFrame) -> pd.Series:
    """`source / nuisance`, prefixed by the sweep when several sweeps share one."""
    cols = ["dataset_source", "dataset_nuisance"]
    name = df["dataset_source"].astype(str) + " / " + df["dataset_nuisance"].astype(str)
    if "sweep" in df and len(df) and df.groupby(cols)["sweep"].nunique().max() > 1:
        name = df["sweep"].astype(str) + ": " + name
    return name


def tail_effect(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of tail eKLD and tail accuracy per (panel, method, augmentation); a panel is a
    dataset/nuisance and imbalance setting (ratios are not pooled)."""
    prof = profile_names(trials)
    name = panel_names(trials)
    df = trials.assign(panel=name.where(prof == "", name + ", " + prof))
    g = df.groupby(["panel", "method", "augmentation"])[["ekld_tail", "tail_accuracy"]]
    out = g.agg(["mean", "std", "count"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out.reset_index()


def fig_tail_effect(trials: pd.DataFrame) -> Figure:
    """Bars: tail eKLD and tail accuracy per balancing method, side by side for each augmentation
    the method was run with (none, GIT, oracle); a pair of panels (eKLD, accuracy) per
    dataset/nuisance and imbalance setting, one legend beside them."""
    order = {a: i for i, a in enumerate(("none", "GIT", "oracle", "GIT+oracle"))}
    metrics = (("ekld_tail", "tail eKLD (lower = more invariant)"), ("tail_accuracy", "tail accuracy"))
    panels = _panels(trials)
    keys = [(row, (col, i)) for (row, col), _ in panels for i in range(len(metrics))]
    fig, axes = _grid(keys, "The tail (smallest third of classes) with and without GIT / oracle augmentation "
                      "(mean ± std over seeds and instances)", width=3.6, max_cols=6, right=1.9)
    for i, ((row, col), d) in enumerate(panels):
        stats = tail_effect(d)
        stats = stats.assign(o=stats["augmentation"].map(order)).sort_values(["method", "o"])
        methods = sorted(stats["method"].unique())
        n_aug = stats["augmentation"].nunique()
        width = 0.8 / n_aug
        slot = {a: j for j, a in enumerate(sorted(stats["augmentation"].unique(), key=order.get))}
        xs = np.array([methods.index(m) + (slot[a] - (n_aug - 1) / 2) * width
                       for m, a in zip(stats["method"], stats["augmentation"])])
        for (metric, ylabel), ax in zip(metrics, axes[2 * i:2 * i + 2]):
            ax.bar(xs, stats[f"{metric}_mean"], width * 0.95, yerr=np.nan_to_num(stats[f"{metric}_std"]),
                   capsize=2, color=[plt.cm.Set2(order[a]) for a in stats["augmentation"]])
            ax.set_xticks(range(len(methods)), methods, fontsize=7, rotation=30 if len(methods) > 3 else 0)
            ax.set_ylabel(ylabel)
            ax.set_title(_title((row, col)), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    present = [a for a in order if a in set(trials["augmentation"])]
    fig.legend(handles=[matplotlib.patches.Patch(color=plt.cm.Set2(order[a]), label=a) for a in present],
               title="augmentation", fontsize=8, title_fontsize=8, loc="upper right",
               bbox_to_anchor=(1.0, 1.0 - 0.95 / fig.get_figheight()), frameon=False)
    if len(present) < 2:
        fig.text(0.5, 0.01, "(no GIT or oracle runs in these results)", ha="center", fontsize=9)
    return fig


def fig_learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame) -> Figure:
    """Validation balanced accuracy per epoch, mean over the trials of each curve label, a panel
    per (nuisance, profile setting). Each label has its own colour, dashes and marker, and one
    legend sits right of the panels, so curves that coincide stay visible and nothing covers them."""
    key = ["sweep", "trial_id"] if "sweep" in epochs and "sweep" in trials else ["trial_id"]
    # Panel columns come from the trials row (epochs rows carry only the partition columns).
    cols = [*key, "method", "augmentation", "dataset_source", "dataset_nuisance",
            *(c for c in PROFILE_COLUMNS if c in trials)]
    df = epochs.drop(columns=[c for c in cols if c in epochs and c not in key]).merge(trials[cols], on=key)
    df = df.assign(label=curve_label(df))
    panels = _panels(df)
    labels = sorted(df["label"].unique())
    styles = curve_styles(labels)
    fig, axes = _grid([k for k, _ in panels], "Learning curves: validation balanced accuracy (mean over trials)",
                      right=2.2)
    n_epochs = int(df["epoch"].nunique()) if len(df) else 1
    # Markers every `step` epochs, each label starting at its own offset: where curves coincide
    # (DRS is ERM until s1) their markers alternate instead of hiding one another.
    step = max(1, min(len(labels), n_epochs // 4))
    for ax, (k, d) in zip(axes, panels):
        for lab, c in d.groupby("label"):
            m = c.groupby("epoch")["val_balanced_accuracy"].agg(["mean", "std"]).reset_index()
            ax.plot(m["epoch"], m["mean"], lw=1.3, ms=5, markevery=(labels.index(lab) % step, step), **styles[lab])
            ax.fill_between(m["epoch"], m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0),
                            color=styles[lab]["color"], alpha=0.08)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("validation balanced accuracy")
        ax.set_title(_title(k), fontsize=10)
        ax.grid(alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], lw=1.3, ms=4, **styles[lab]) for lab in labels]
    fig.legend(handles, labels, fontsize=8, title="method (+augmentation)", title_fontsize=8,
               loc="upper right", bbox_to_anchor=(1.0, 1.0 - 0.95 / fig.get_figheight()), frameon=False)
    return fig


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; closes it (figures are not kept open across a report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
