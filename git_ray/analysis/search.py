"""Optuna sweeps: find a sweep's study and plot its optimisation history and parameter importances.

The study is read from where the sweep layer keeps it (`optuna.db` or `optuna-journal/` in the
sweep folder, or `search.study_storage` of the saved `sweep.yaml`; study name = the sweep's
name unless `search.study_name` says otherwise). A sweep whose `sweep.yaml` has a search space
but no readable study (a random search, or a moved folder) gets a study rebuilt in memory from
its trials, so the same plots work for it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import matplotlib.ticker
import numpy as np
import optuna
import pandas as pd
import yaml
from matplotlib.figure import Figure

from git_ray import storage
from git_ray.analysis.figures import plt
from git_ray.analysis.load import Sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)

# search.metric -> the per-epoch column a sweep optimises (the test set never steers a search).
_TUNE_METRIC = {"balanced_accuracy": "val_balanced_accuracy", "accuracy": "val_accuracy"}


@dataclass
class StudyFound:
    """A sweep's Optuna study (None if it has none) and how it was found."""

    sweep: str
    study: optuna.Study | None
    source: str = ""
    notes: list[str] = field(default_factory=list)


def read_sweep_file(sweep: Sweep) -> dict[str, Any]:
    """The `sweep.yaml` the sweep layer saved beside the results, or {}."""
    path = storage.join(sweep.root, "sweep.yaml")
    if not storage.exists(path):
        return {}
    try:
        return yaml.safe_load(storage.read_bytes(path)) or {}
    except yaml.YAMLError as err:
        warnings.warn(f"{path}: not valid YAML ({err}); ignoring it")
        return {}


def _storage_urls(sweep: Sweep, search: dict[str, Any]) -> list[str]:
    urls = [search["study_storage"]] if search.get("study_storage") else []
    db = storage.join(sweep.root, "optuna.db")
    if not storage.is_remote(sweep.root) and storage.exists(db):
        urls.append("sqlite:///" + storage.resolve(db)[1])
    journal = storage.join(sweep.root, "optuna-journal")
    if storage.exists(journal):
        urls.append(journal)
    return urls


def _load(url: str, names: list[str]) -> optuna.Study | None:
    from git_ray.sweep.optuna_storage import open_storage  # optuna only; no ray

    st = open_storage(url)
    existing = [s.study_name for s in optuna.get_all_study_summaries(st)]
    pick = next((n for n in names if n in existing), existing[0] if len(existing) == 1 else None)
    return None if pick is None else optuna.load_study(study_name=pick, storage=st)


def rebuild_study(trials: pd.DataFrame, epochs: pd.DataFrame, search: dict[str, Any]) -> optuna.Study | None:
    """An in-memory study from finished trials and the sweep's search space (dotted keys)."""
    space = search.get("space") or {}
    if not space or trials.empty:
        return None
    metric = search.get("metric", "balanced_accuracy")
    column = _TUNE_METRIC.get(metric, metric)
    if column in epochs:
        last = epochs.sort_values("epoch").groupby("trial_id")[column].last()
        values = trials["trial_id"].map(last)
    else:
        values = trials[column] if column in trials else pd.Series(np.nan, index=trials.index)
    dists = {}
    for key, dist in space.items():
        kind, args = next(iter(dist.items()))
        dists[key] = {
            "uniform": lambda a: optuna.distributions.FloatDistribution(a[0], a[1]),
            "loguniform": lambda a: optuna.distributions.FloatDistribution(a[0], a[1], log=True),
            "int": lambda a: optuna.distributions.IntDistribution(int(a[0]), int(a[1])),
            "choice": lambda a: optuna.distributions.CategoricalDistribution(list(a)),
        }[kind](args)
    study = optuna.create_study(direction="minimize" if search.get("mode") == "min" else "maximize")
    order = trials.sort_values("finished_at") if "finished_at" in trials else trials
    for idx, row in order.iterrows():
        params = {}
        for key, d in dists.items():
            v = row.get(key.replace(".", "_"))
            v = v.item() if hasattr(v, "item") else v
            params[key] = int(v) if isinstance(d, optuna.distributions.IntDistribution) else v
        value = values.loc[idx]
        if pd.isna(value):
            continue
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(value)))
        except ValueError:  # a value outside the space (e.g. a base value not searched here)
            continue
    return study if study.trials else None


def find_study(sweep: Sweep, trials: pd.DataFrame, epochs: pd.DataFrame) -> StudyFound:
    """The sweep's stored study, else one rebuilt from its trials, else none."""
    spec = read_sweep_file(sweep)
    search = spec.get("search") or {}
    names = [n for n in (search.get("study_name"), spec.get("name"), sweep.name) if n]
    found = StudyFound(sweep.name, None)
    for url in _storage_urls(sweep, search):
        try:
            study = _load(url, names)
        except Exception as err:  # noqa: BLE001 - an unreadable store is reported, not fatal
            found.notes.append(f"{sweep.name}: could not open the Optuna study at {url}: {err}")
            continue
        if study is not None:
            found.study, found.source = study, url
            return found
        found.notes.append(f"{sweep.name}: no study named {names[0]!r} in {url}")
    t, e = trials[trials["sweep"] == sweep.name], epochs[epochs["sweep"] == sweep.name]
    study = rebuild_study(t, e, search)
    if study is not None:
        found.study, found.source = study, "rebuilt from the trials and sweep.yaml's search space"
    return found


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]


def fig_study(found: StudyFound) -> tuple[Figure, list[str]]:
    """Optimisation history (each trial's value and the best so far) and parameter importances."""
    study, notes = found.study, []
    fig, (ax_h, ax_i) = plt.subplots(1, 2, figsize=(12, 4.4))
    if len(study.directions) > 1:
        notes.append(f"{found.sweep}: multi-objective study; history and importances not plotted")
        for ax in (ax_h, ax_i):
            ax.text(0.5, 0.5, "multi-objective study: not plotted", ha="center", va="center",
                    transform=ax.transAxes)
    else:
        done = _complete(study)
        maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
        nums = [t.number for t in done]
        vals = [t.value for t in done]
        best = np.maximum.accumulate(vals) if maximise else np.minimum.accumulate(vals)
        ax_h.scatter(nums, vals, s=14, label="trial")
        ax_h.step(nums, best, where="post", color="C3", label="best so far")
        ax_h.set_xlabel("trial number")
        ax_h.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax_h.set_ylabel(f"objective ({'maximised' if maximise else 'minimised'})")
        ax_h.set_title("Optimisation history")
        ax_h.grid(alpha=0.3)
        ax_h.legend(fontsize=8)
        importances = _importances(study, done, notes, found.sweep)
        if importances:
            names = list(importances)[::-1]
            ax_i.barh(names, [importances[n] for n in names], color="C2")
            ax_i.set_xlabel("importance (fraction of objective variance)")
            ax_i.set_ylabel("parameter")
        else:
            ax_i.text(0.5, 0.5, notes[-1].split(": ", 1)[-1], ha="center", va="center", wrap=True,
                      transform=ax_i.transAxes, fontsize=9)
            ax_i.set_xticks([])
            ax_i.set_yticks([])
        ax_i.set_title("Parameter importances")
    where = found.source.rsplit("/", 1)[-1] if "://" in found.source else found.source
    fig.suptitle(f"Search: {found.sweep} ({len(study.trials)} trials; study: {where})", fontsize=10)
    fig.tight_layout()
    return fig, notes


def _importances(study, done, notes: list[str], sweep: str) -> dict[str, float]:
    if len(done) < 2:
        notes.append(f"{sweep}: parameter importances need at least 2 complete trials ({len(done)} so far)")
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:
        notes.append(f"{sweep}: parameter importances not computed: {err}")
        return {}
