"""The sweep file: a typed, fully validated description of many trials (no Ray imported here).

A sweep is `base` (one trial config) + `grid` (cartesian product over dotted keys, whole
sub-configs allowed as values, merged into base) + an optional `search` (random or Optuna over
a space of distributions). `load_sweep` checks everything a user can get wrong (unknown keys,
types, registry names, every grid point, both ends of every search range) before Ray starts.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
from pydantic import Field, ValidationError, field_validator, model_validator

from git_ray.config import (ConfigError, Strict, TrialConfig, deep_merge, format_validation_error,
                            read_yaml, set_dotted, stable_hash, trial_config)

# Search metrics are validation metrics reported every epoch: the test set never steers a search.
METRICS = {"balanced_accuracy": "val_balanced_accuracy", "accuracy": "val_accuracy",
           "val_balanced_accuracy": "val_balanced_accuracy", "val_accuracy": "val_accuracy",
           "train_loss": "train_loss"}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# `fuse` when the sweep file leaves it out: GPU trials 16 to a process (a lone K49 ResNet-20
# leaves most of an H100 idle, issue 14), CPU trials alone (a CPU core is busy with one).
DEFAULT_GPU_FUSE = 16
# The one Tune param-space axis of a fused sweep: a Tune trial's list of the grid points it trains.
FUSED_KEY = "fused_members"
# What fused trials may differ in (dotted keys); everything else must be equal. A member's data
# differs by instance (same class sizes, another class order) and its training by everything
# that is per sample, per loss or per schedule; the network and batch structure are shared.
MEMBER_KEYS = ("seed", "dataset.instance", "balance", "augment.oracle", "augment.nuisance_strength",
               "augment.flip", "model.head", "train.lr", "train.momentum", "train.weight_decay",
               "train.warmup_epochs", "train.s1", "train.s2")


class Resources(Strict):
    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)  # a fraction packs several trials on one GPU
    gpu_memory_fraction: float | None = Field(None, gt=0.0, le=1.0)  # default: the gpu share

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("a GPU share above 1 must be a whole number of GPUs")
        return v


class SearchSpec(Strict):
    algorithm: Literal["random", "optuna"] = "random"
    metric: str = "balanced_accuracy"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(10, ge=1)
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    study_storage: str | None = None  # Optuna storage URL; default: SQLite beside the results
    study_name: str | None = None  # default: the sweep's name
    seed: int = 0
    scheduler: Literal["asha", "none"] = "none"
    grace_period: int = Field(5, ge=1)  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: int = Field(3, ge=2)

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"{v!r} is not a searchable metric; choose one of: {', '.join(METRICS)}")
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key, dist in space.items():
            if not isinstance(dist, Mapping) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
                raise ValueError(f"space.{key}: write one distribution as {{KIND: ARGS}} with KIND one of "
                                 f"{', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [0.01, 0.3]}}; got {dist!r}")
            kind, args = next(iter(dist.items()))
            if kind == "choice":
                if not isinstance(args, list) or not args:
                    raise ValueError(f"space.{key}: choice needs a non-empty list of values")
                continue
            if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
                raise ValueError(f"space.{key}: {kind} needs [low, high]; got {args!r}")
            lo, hi = args
            if not lo < hi:
                raise ValueError(f"space.{key}: low ({lo}) must be below high ({hi})")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"space.{key}: loguniform needs a positive low; got {lo}")
            if kind == "int" and not (float(lo).is_integer() and float(hi).is_integer()):
                raise ValueError(f"space.{key}: int needs whole-number bounds; got {args!r}")
        return space

    @property
    def tune_metric(self) -> str:
        return METRICS[self.metric]


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str = "results"
    resources_per_trial: Resources = Resources()
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)  # retries of a failing trial before it is recorded as failed
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: SearchSpec | None = None
    # Ray Tune's own output: 0 (default) none, git_ray's progress display instead; 1..3 Tune's
    # status tables and per-trial boxes (`git-ray sweep --verbose` sets 2).
    verbose: int = Field(0, ge=0, le=3)
    # Seconds between the epoch rows a trial sends to Tune (0: every epoch). A scheduler (ASHA)
    # always gets every epoch; the epochs table in the results always has every epoch.
    progress_every_s: float = Field(10.0, ge=0.0)
    # Seconds without a heartbeat after which a lease (the sweep's driver, a generator's lock) is
    # taken over: its holder renews it every lease_s / 4 s while alive.
    lease_s: float = Field(60.0, gt=0.0)
    # Train up to this many grid trials that share a network and data shape in one process as
    # one stacked network (git_ray.train.fused). None: DEFAULT_GPU_FUSE with GPUs, else 1.
    fuse: int | None = Field(None, ge=1)

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
            if key.startswith("@") and not all(isinstance(v, Mapping) for v in values):
                raise ValueError(f"grid.{key}: an @-axis takes partial trial configs, e.g. "
                                 "- {balance: {sampler: drs}, augment: {oracle: true}}")
        return grid

    @model_validator(mode="after")
    def _combination(self) -> "SweepSpec":
        if self.search and self.search.algorithm == "optuna" and self.grid:
            raise ValueError("an Optuna search cannot be combined with a grid: move the grid axes into "
                             "search.space as {choice: [...]}, or drop the search to run the grid")
        if self.search and (self.fuse or 1) > 1:
            raise ValueError(f"fuse: {self.fuse} needs a grid sweep: a search reports each trial's "
                             "metrics to its searcher alone; drop fuse (or set fuse: 1) for searches")
        overlap = set(self.grid) & set(self.search.space if self.search else {})
        if overlap:
            raise ValueError(f"{sorted(overlap)} appear in both grid and search.space; keep each in one")
        return self

    # -- derived -------------------------------------------------------------------------------
    @property
    def root(self) -> str:
        """Where this sweep's results live: <storage>/<name>."""
        return self.storage.rstrip("/") + "/" + self.name

    @property
    def study_storage(self) -> str | None:
        if not self.search or self.search.algorithm != "optuna":
            return None
        return self.search.study_storage or default_study_storage(self.root)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid axes, as {dotted key: value} dicts, in file order."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def trial_config(self, params: Mapping[str, Any]) -> TrialConfig:
        """The full trial config for one point of the grid / search space."""
        data: dict[str, Any] = dict(self.base)
        for key, value in params.items():
            # "@label" axes carry partial trial configs merged at the top, so one axis can move
            # several sections together (e.g. a method that sets balance.* and augment.*).
            data = deep_merge(data, value) if key.startswith("@") else set_dotted(data, key, value)
        return trial_config(data, where=f"sweep {self.name!r} trial {dict(params)}")

    def trial_configs(self) -> list[TrialConfig]:
        return [self.trial_config(p) for p in self.grid_points()]

    def planned_points(self) -> list[dict[str, Any]] | None:
        """Every trial of the sweep as its {dotted key: value} point, one per distinct trial
        config, in order: the grid, or for a random search `num_samples` draws per grid point
        from a generator seeded by `search.seed` (so a re-run, `--dry-run` and `git-ray status`
        all plan the same trials as the driver). None for an Optuna search, whose trials are
        decided one by one by its study."""
        if self.search and self.search.algorithm == "optuna":
            return None
        rng = np.random.default_rng(self.search.seed if self.search else 0)
        space = self.search.space.items() if self.search else ()
        points: dict[str, dict[str, Any]] = {}
        for point in self.grid_points():
            for _ in range(self.search.num_samples if self.search else 1):
                full = {**point, **{k: sample_value(d, rng) for k, d in space}}
                points.setdefault(self.trial_config(full).fingerprint(), full)
        return list(points.values())

    def to_yaml(self) -> bytes:
        """The resolved sweep file, as stored beside the results (what `git-ray status` reads)."""
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False).encode()

    @property
    def fuse_size(self) -> int:
        """How many trials train fused at most: `fuse`, else by device (1 for searches)."""
        if self.search:
            return 1
        if self.fuse is not None:
            return self.fuse
        return DEFAULT_GPU_FUSE if self.resources_per_trial.gpu > 0 else 1

    def fused_groups(self, points: list[dict[str, Any]] | None = None) -> list[list[dict[str, Any]]]:
        """`points` (default: the whole grid; the driver passes the ones without rows) in groups
        that train fused: points whose configs agree on everything but MEMBER_KEYS, in the given
        order, cut into groups of at most `fuse_size`."""
        return self.cut_into_groups(self.grid_points() if points is None else points,
                                    lambda point: fuse_key(self.trial_config(point)))

    def cut_into_groups(self, items: list, key: Callable[[Any], Any]) -> list[list]:
        """`items` with equal `key` together, in their order, cut into groups of at most
        `fuse_size`: how fused trials and fused generators are packed."""
        groups: dict[Any, list] = {}
        for item in items:
            groups.setdefault(key(item), []).append(item)
        n = self.fuse_size
        return [g[i:i + n] for g in groups.values() for i in range(0, len(g), n)]

    def num_trials(self) -> int:
        """Trials the sweep runs: the planned ones (a random search's draws that repeat a trial
        count once), or for an Optuna search `num_samples` per grid point."""
        planned = self.planned_points()
        return len(planned) if planned is not None else len(self.grid_points()) * self.search.num_samples


def fuse_key(cfg: TrialConfig) -> str:
    """Equal for trials that may train fused: their configs without MEMBER_KEYS."""
    d = cfg.model_dump()
    for key in MEMBER_KEYS:
        *path, leaf = key.split(".")
        node = d
        for part in path:
            node = node[part]
        node.pop(leaf)
    return stable_hash(d)


def default_study_storage(root: str) -> str:
    if "://" in root:
        # Optuna's SQLite needs a local file; remote sweeps use the journal kept beside the results.
        return root.rstrip("/") + "/optuna-journal"
    return f"sqlite:///{Path(root).resolve()}/optuna.db"


def space_corners(space: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The low and high end of every range, a point inside it (a whole-number field must not get
    a continuous distribution), and every choice: enough to validate the space."""
    lows, highs, mids, extra = {}, {}, {}, []
    for key, dist in space.items():
        kind, args = next(iter(dist.items()))
        if kind == "choice":
            lows[key], highs[key] = args[0], args[-1]
            extra += [{key: v} for v in args[1:-1]]
        elif kind == "int":
            lows[key], highs[key] = int(args[0]), int(args[1])
        else:
            lows[key], highs[key] = float(args[0]), float(args[1])
            mids[key] = float(args[0]) + 0.377 * (float(args[1]) - float(args[0]))
    return [lows, highs] + ([mids] if mids else []) + extra


# Keys an extending sweep file replaces whole when it gives them (merging two grids or two
# search spaces axis by axis would run trials neither file lists); every other key deep-merges.
REPLACED_WHOLE = ("grid", "search")


def read_sweep_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A sweep file's mapping with its `extends` resolved: `extends: OTHER.yaml` (relative to this
    file's folder) starts from that sweep file's own resolved mapping and lays this one over it:
    `base` and the other settings deep-merge, `grid` and `search` are replaced whole, and `name`
    must be this file's own (the results of two sweeps never share a folder)."""
    here = Path(path)
    data = read_yaml(here)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{here}: expected a mapping with name, base, grid, ... at the top level")
    data = dict(data)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise ConfigError(f"{here}: extends: {parent_ref!r} must be the path of another sweep file, "
                          "e.g. extends: glyphs_git_cpu.yaml")
    parent = (here.parent / parent_ref).resolve()
    chain = (*_chain, here.resolve())
    if parent in chain:
        loop = " -> ".join(str(p) for p in (*chain, parent))
        raise ConfigError(f"{here}: extends {parent_ref!r}, which leads back to itself ({loop}); "
                          "remove one of the extends")
    if not parent.is_file():
        raise ConfigError(f"{here}: extends {parent_ref!r}, but {parent} is no file (the path is "
                          "relative to the folder of the file that extends it)")
    inherited = read_sweep_file(parent, chain)
    if "name" not in data or data["name"] == inherited.get("name"):
        raise ConfigError(f"{here}: extends {parent_ref!r} and needs a name of its own (results go to "
                          f"<storage>/<name>/): set name: to something other than {inherited.get('name')!r}")
    # What this file replaces whole leaves the inherited mapping first, so the merge only sets it.
    return deep_merge({k: v for k, v in inherited.items() if not (k in REPLACED_WHOLE and k in data)}, data)


def load_sweep(path: str | Path, storage: str | None = None, max_concurrent: int | None = None) -> SweepSpec:
    """Read and completely validate a sweep file; raise ConfigError naming every problem."""
    data = read_sweep_file(path)
    if storage is not None:
        data["storage"] = storage
    if max_concurrent is not None:
        data["max_concurrent_trials"] = max_concurrent
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    where = f"{path}"
    trial_config(spec.base, where=f"{where}: base")
    seen: set[str] = set()
    for point in spec.grid_points():
        cfg = _checked(spec, point, f"{where}: grid point {point}")
        fp = cfg.fingerprint()
        if fp in seen and not spec.search:
            raise ConfigError(f"{where}: grid point {point} repeats an earlier trial exactly; "
                              "remove the duplicate value from the grid")
        seen.add(fp)
    if spec.search:
        for corner in space_corners(spec.search.space):
            for point in spec.grid_points():
                _checked(spec, {**point, **corner}, f"{where}: search.space value {corner}")
    return spec


def _checked(spec: SweepSpec, params: Mapping[str, Any], where: str) -> TrialConfig:
    try:
        return spec.trial_config(params)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"sweep {spec.name!r} trial {dict(params)}", where, 1)) from None


def sample_value(dist: dict[str, Any], rng: np.random.Generator) -> Any:
    """One draw from a search-space distribution ({uniform|loguniform|int|choice: args})."""
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "int":
        return int(rng.integers(int(args[0]), int(args[1]) + 1))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return float(rng.uniform(float(args[0]), float(args[1])))
