"""Figures from the results (matplotlib, Agg backend): each function takes DataFrames and returns
a Figure; nothing here computes a number that is not also in the tables or the Parquet files.

- eKLD per class against training class size (log x), one line per balancing method (+ GIT /
  oracle), one panel per dataset/nuisance: the paper's central plot.
- per-class test accuracy against class size, laid out the same way.
- the tail: eKLD and accuracy of the smallest third of classes, with and without GIT / oracle.
- learning curves: validation balanced accuracy per epoch.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.patches  # noqa: E402,F401
import matplotlib.ticker  # noqa: E402,F401
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Beyond this many distinct class sizes, sizes are pooled into log-spaced bins.
MAX_DISTINCT_SIZES = 12
N_BINS = 10


def curve_label(df: pd.DataFrame) -> pd.Series:
    """`method` alone, or `method +GIT` / `method +oracle` for augmented runs."""
    return df["method"].where(df["augmentation"] == "none", df["method"] + " +" + df["augmentation"])


def _panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per dataset/nuisance (and per sweep when several sweeps share one)."""
    return list(df.groupby(panel_names(df), sort=True))


def _grid(n: int, title: str, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list]:
    """A grid of panels with fixed margins (in inches): tight_layout on log axes costs seconds
    per figure, and these panels all look alike anyway."""
    cols = min(n, 3)
    rows = -(-n // cols)
    top, bottom, left, right, gap_w, gap_h = 0.95, 0.6, 0.75, 0.25, 0.75, 0.75  # inches
    w = max(7.5, width * cols)
    h = height * rows + top
    fig, axes = plt.subplots(rows, cols, figsize=(w, h), squeeze=False, gridspec_kw=dict(
        left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
        wspace=gap_w / ((w - left - right - gap_w * (cols - 1)) / cols),
        hspace=gap_h / ((h - top - bottom - gap_h * (rows - 1)) / rows)))
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return fig, list(axes.flat[:n])


def size_bins(sizes: pd.Series) -> pd.Series:
    """A representative class size for each row: itself when there are few distinct sizes,
    else the geometric centre of its log-spaced bin."""
    distinct = np.unique(sizes)
    if len(distinct) <= MAX_DISTINCT_SIZES:
        return sizes.astype(float)
    edges = np.geomspace(distinct.min(), distinct.max() * 1.000001, N_BINS + 1)
    idx = np.clip(np.searchsorted(edges, sizes, side="right") - 1, 0, N_BINS - 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    return pd.Series(centres[idx], index=sizes.index)


def size_curve(per_class: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean and std of `value` per (curve label, size bin): the numbers behind one panel."""
    df = per_class.assign(label=curve_label(per_class), size=size_bins(per_class["train_count"]))
    return (df.groupby(["label", "size"])[value].agg(["mean", "std", "count"]).reset_index()
            .sort_values(["label", "size"]))


def fig_vs_class_size(per_class: pd.DataFrame, value: str, ylabel: str, title: str) -> Figure:
    """`value` per class against training class size: binned mean line, ±1 std band, raw points."""
    panels = _panels(per_class)
    fig, axes = _grid(len(panels), title)
    labels = sorted(curve_label(per_class).unique())
    colours = {lab: plt.cm.tab10(i % 10) for i, lab in enumerate(labels)}
    for ax, (name, df) in zip(axes, panels):
        curve = size_curve(df, value)
        raw = df.assign(label=curve_label(df))
        for lab, c in curve.groupby("label"):
            pts = raw[raw["label"] == lab]
            ax.scatter(pts["train_count"], pts[value], s=6, alpha=0.25, color=colours[lab])
            ax.plot(c["size"], c["mean"], marker="o", ms=3, color=colours[lab], label=lab)
            sd = c["std"].fillna(0.0)
            low = c["mean"] - sd
            if (df[value] >= 0).all():  # eKLD and accuracy cannot go below 0; neither should the band
                low = low.clip(lower=0.0)
            ax.fill_between(c["size"], low, c["mean"] + sd, color=colours[lab], alpha=0.15)
        ax.set_xscale("log")
        # Plain numbers (1, 10, 100) read better than 10^k and skip mathtext, which is slow.
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training images in the class (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="balancing (+augmentation)", title_fontsize=7, loc="upper right")
    return fig


def fig_ekld_vs_size(per_class: pd.DataFrame) -> Figure:
    return fig_vs_class_size(per_class, "ekld", "eKLD (lower = more invariant)",
                             "Invariance vs class size: eKLD per class\n(mean ± std over classes of that size and seeds)")


def fig_accuracy_vs_size(per_class: pd.DataFrame) -> Figure:
    return fig_vs_class_size(per_class, "accuracy", "test accuracy of the class",
                             "Per-class test accuracy vs class size")


def panel_names(df: pd.DataFrame) -> pd.Series:
    """`source / nuisance`, prefixed by the sweep when several sweeps share one."""
    cols = ["dataset_source", "dataset_nuisance"]
    name = df["dataset_source"].astype(str) + " / " + df["dataset_nuisance"].astype(str)
    if "sweep" in df and len(df) and df.groupby(cols)["sweep"].nunique().max() > 1:
        name = df["sweep"].astype(str) + ": " + name
    return name


def tail_effect(trials: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of tail eKLD and tail accuracy per (panel, method, augmentation)."""
    df = trials.assign(panel=panel_names(trials))
    g = df.groupby(["panel", "method", "augmentation"])[["ekld_tail", "tail_accuracy"]]
    out = g.agg(["mean", "std", "count"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    return out.reset_index()


def fig_tail_effect(trials: pd.DataFrame) -> Figure:
    """Bars: tail eKLD and tail accuracy per balancing method, side by side for each augmentation
    the method was run with (none, GIT, oracle)."""
    stats = tail_effect(trials)
    order = {a: i for i, a in enumerate(("none", "GIT", "oracle", "GIT+oracle"))}
    stats = stats.assign(o=stats["augmentation"].map(order)).sort_values(["panel", "method", "o"])
    multi_panel = stats["panel"].nunique() > 1
    # Bars of one (panel, method) group sit together; groups are separated by a gap.
    xs, ticks, labels, x = [], [], [], 0.0
    for (panel, method), g in stats.groupby(["panel", "method"], sort=False):
        pos = x + np.arange(len(g))
        xs.extend(pos)
        ticks.append(pos.mean())
        labels.append(f"{method}\n{panel}" if multi_panel else method)
        x = pos[-1] + 1.8
    xs = np.array(xs)
    colours = [plt.cm.Set2(order[a]) for a in stats["augmentation"]]
    fig, axes = plt.subplots(1, 2, figsize=(min(24.0, max(9.0, 0.5 * x + 4)), 4.8))
    for ax, metric, ylabel in ((axes[0], "ekld_tail", "tail eKLD (smallest third of classes)"),
                               (axes[1], "tail_accuracy", "tail accuracy (smallest third of classes)")):
        ax.bar(xs, stats[f"{metric}_mean"], 0.9, yerr=np.nan_to_num(stats[f"{metric}_std"]), capsize=3,
               color=colours)
        ax.set_xticks(ticks, labels, fontsize=7, rotation=30 if multi_panel and len(ticks) > 3 else 0)
        ax.set_xlabel("balancing method")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        present = [a for a in order if a in set(stats["augmentation"])]
        ax.legend(handles=[matplotlib.patches.Patch(color=plt.cm.Set2(order[a]), label=f"augmentation: {a}")
                           for a in present], fontsize=7, loc="upper right")
    note = "" if stats["augmentation"].nunique() > 1 else "\n(no GIT or oracle runs in these results)"
    fig.suptitle("The tail with and without GIT / oracle augmentation (mean ± std over seeds)" + note, fontsize=11)
    fig.tight_layout()
    return fig


def fig_learning_curves(epochs: pd.DataFrame, trials: pd.DataFrame) -> Figure:
    """Validation balanced accuracy per epoch, mean over the trials of each curve label."""
    key = ["sweep", "trial_id"] if "sweep" in epochs and "sweep" in trials else ["trial_id"]
    meta = trials[[*key, "method", "augmentation"]]
    df = epochs.drop(columns=[c for c in ("method", "augmentation") if c in epochs]).merge(meta, on=key)
    df = df.assign(label=curve_label(df))
    panels = _panels(df)
    fig, axes = _grid(len(panels), "Learning curves: validation balanced accuracy (mean over trials)")
    for ax, (name, d) in zip(axes, panels):
        for lab, c in d.groupby("label"):
            m = c.groupby("epoch")["val_balanced_accuracy"].agg(["mean", "std"]).reset_index()
            ax.plot(m["epoch"], m["mean"], marker=".", label=lab)
            ax.fill_between(m["epoch"], m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("validation balanced accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="balancing (+augmentation)", title_fontsize=7, loc="upper right")
    return fig


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes; closes it (figures are not kept open across a report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
