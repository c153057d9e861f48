"""Figure layout on constructed per-class rows: a panel per (nuisance, imbalance setting), each
line's mean Spearman in its legend, legends outside the axes so no curve is covered."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from git_ray.analysis import figures as F
from git_ray.metrics.stats import spearman


def per_class_rows(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """per_class, trials and epochs of 2 nuisances x 2 ratios x 2 methods x 3 trials, eKLD
    falling with class size (steeper for ERM)."""
    rng = np.random.default_rng(seed)
    pcs, trials, epochs = [], [], []
    for nuisance in ("background", "dilation"):
        for ratio in (100, 10):
            counts = np.round(200 * ratio ** (-np.arange(8) / 7))
            for method, slope in (("ce", 0.2), ("ce+drs", 0.1)):
                for i in range(3):
                    tid = f"{nuisance}-{ratio}-{method}-{i}"
                    ekld = 1.0 - slope * np.log(counts) + rng.normal(0, 0.05, len(counts))
                    meta = {"sweep": "s", "trial_id": tid, "dataset_source": "digits", "dataset_nuisance": nuisance,
                            "dataset_imbalance_ratio": float(ratio), "dataset_profile": "exp",
                            "method": method, "augmentation": "none"}
                    pcs += [{**meta, "train_count": int(n), "ekld": float(k), "accuracy": 0.5}
                            for n, k in zip(counts, ekld)]
                    trials.append({**meta, "ekld_size_spearman": spearman(counts, ekld)})
                    epochs += [{"sweep": "s", "trial_id": tid, "epoch": e, "val_balanced_accuracy": 0.1 * e}
                               for e in range(4)]
    return pd.DataFrame(pcs), pd.DataFrame(trials), pd.DataFrame(epochs)


def test_natural_order_of_panel_names():
    names = ["ratio 100", "ratio 50", "ratio 10", "alpha 2, ratio 5"]
    assert sorted(names, key=F.natural_key) == ["alpha 2, ratio 5", "ratio 10", "ratio 50", "ratio 100"]
    assert sorted([("a", ("ratio 100", 0)), ("a", ("ratio 10", 1)), ("a", ("ratio 10", 0))], key=F.natural_key) == [
        ("a", ("ratio 10", 0)), ("a", ("ratio 10", 1)), ("a", ("ratio 100", 0))]


def test_panels_split_by_imbalance_ratio():
    pc, _, _ = per_class_rows()
    keys = [k for k, _ in F._panels(pc)]
    assert keys == [("digits / background", "ratio 10"), ("digits / background", "ratio 100"),
                    ("digits / dilation", "ratio 10"), ("digits / dilation", "ratio 100")]
    one_ratio = pc[pc["dataset_imbalance_ratio"] == 10]
    assert [k for k, _ in F._panels(one_ratio)] == [("digits / background", ""), ("digits / dilation", "")]


def test_legend_spearman_is_the_trials_mean():
    pc, trials, _ = per_class_rows()
    panel = pc[(pc["dataset_nuisance"] == "dilation") & (pc["dataset_imbalance_ratio"] == 100)]
    want = trials[(trials["dataset_nuisance"] == "dilation") & (trials["dataset_imbalance_ratio"] == 100)]
    got = F.size_spearman(panel, "ekld")
    for method in ("ce", "ce+drs"):
        assert got[method] == pytest.approx(want[want["method"] == method]["ekld_size_spearman"].mean())
    fig = F.fig_ekld_vs_size(pc)
    ax = next(a for a in fig.axes if a.get_title() == "digits / dilation, ratio 100")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"ce (ρ {got['ce']:+.2f})", f"ce+drs (ρ {got['ce+drs']:+.2f})"]
    plt.close(fig)


def _outside(fig, legend, axes) -> bool:
    """The legend's box overlaps no axes' box."""
    fig.canvas.draw()
    lb = legend.get_window_extent()
    return not any(lb.overlaps(a.get_window_extent()) for a in axes)


def test_legends_sit_outside_the_axes():
    pc, trials, epochs = per_class_rows()
    fig = F.fig_ekld_vs_size(pc)
    assert len(fig.axes) == 4
    # A grid: nuisances down, ratios across.
    pos = {a.get_title(): a.get_position() for a in fig.axes}
    assert pos["digits / background, ratio 10"].x0 == pytest.approx(pos["digits / dilation, ratio 10"].x0)
    assert pos["digits / background, ratio 10"].y0 > pos["digits / dilation, ratio 10"].y0
    assert pos["digits / background, ratio 100"].x0 > pos["digits / background, ratio 10"].x1
    for ax in fig.axes:
        assert _outside(fig, ax.get_legend(), fig.axes)
    plt.close(fig)
    curves = F.fig_learning_curves(epochs, trials)
    assert len(curves.axes) == 4 and len(curves.legends) == 1
    assert _outside(curves, curves.legends[0], curves.axes)
    # Lines of different methods differ in dashes and markers, not only in colour.
    lines = curves.axes[0].get_lines()
    assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == len(lines) == 2
    plt.close(curves)
    tail = F.fig_tail_effect(trials.assign(ekld_tail=1.0, tail_accuracy=0.5))
    assert len(tail.axes) == 8 and len(tail.legends) == 1  # (eKLD, accuracy) x 2 nuisances x 2 ratios
    assert _outside(tail, tail.legends[0], tail.axes)
    plt.close(tail)


def test_tail_table_keeps_ratios_apart():
    _, trials, _ = per_class_rows()
    trials = trials.assign(ekld_tail=trials["dataset_imbalance_ratio"] / 10, tail_accuracy=0.5)
    tail = F.tail_effect(trials).set_index(["panel", "method"])
    assert len(tail) == 8 and tail["ekld_tail_count"].eq(3).all()
    assert tail.loc[("digits / dilation, ratio 100", "ce"), "ekld_tail_mean"] == pytest.approx(10.0)
    assert tail.loc[("digits / dilation, ratio 10", "ce"), "ekld_tail_mean"] == pytest.approx(1.0)


def test_size_bins_sit_where_their_classes_are():
    # The K49-LT shape: many classes at the floor of 5, a few large ones.
    sizes = pd.Series([5] * 30 + list(range(6, 40)) + [100, 400, 1000])
    b = F.size_bins(sizes)
    assert b.iloc[0] == pytest.approx(np.exp(np.log(sizes[b == b.iloc[0]]).mean()))
    assert 5 <= b.iloc[0] < 5.5 and b.iloc[-1] == pytest.approx(1000)
