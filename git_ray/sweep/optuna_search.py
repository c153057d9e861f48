"""Ray Tune's OptunaSearch, tied to git_ray's trial ids in both directions.

When the searcher asks the study for a trial, the Optuna trial gets the git_ray `trial_id` of the
config it proposes as the user attribute `git_ray_trial_id` (so a study opened in
optuna-dashboard points at the Parquet rows), and the proposed config carries the Optuna trial
number under `__optuna_trial_number`, which the trainable writes to the trials row's
`optuna_trial_number` column (keys starting with `__` are never config keys). Both happen in the
driver, where OptunaSearch runs and is the study's only writer.
"""
from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from git_ray.sweep.spec import SweepSpec

NUMBER_KEY = "__optuna_trial_number"
TRIAL_ID_ATTR = "git_ray_trial_id"


class LinkedOptunaSearch(OptunaSearch):
    """OptunaSearch whose trials know their git_ray trial_id and vice versa."""

    def __init__(self, *args: Any, spec: SweepSpec, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._git_ray_spec = spec

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if not isinstance(params, dict):  # None (wait) or Searcher.FINISHED
            return params
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(TRIAL_ID_ATTR, self._git_ray_spec.trial_config(params).fingerprint())
        return {**params, NUMBER_KEY: ot_trial.number}
