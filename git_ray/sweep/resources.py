"""Do a sweep's trials fit the Ray cluster? Checked before any trial is submitted.

Ray keeps a trial that no node can hold PENDING for good (with an autoscaler it logs "No
available node types can fulfill resource request" every 30 s), so a sweep asking for a GPU on
a CPU-only machine would hang all night. `check_trials_fit` compares what one trial asks for with
every node (a trial runs on one node) and, where the cluster autoscales, with every node type of
its cluster config; if none can hold it, the sweep stops with exit 2 before any work.

A local Ray is judged before it starts, from this machine's CPUs (or --num-cpus) and the GPUs
torch sees; a running cluster (--address) right after connecting, from `ray.nodes()`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from git_ray.config import ConfigError

# Where the Ray cluster launcher puts the cluster config on the head node (the autoscaler's copy).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def fits(asked: Mapping[str, float], node: Mapping[str, float]) -> bool:
    """Whether one node with `node` resources ({"CPU": 8, "GPU": 1}) can hold one trial."""
    return (asked.get("cpu", 0.0) <= node.get("CPU", 0.0) + 1e-9
            and asked.get("gpu", 0.0) <= node.get("GPU", 0.0) + 1e-9)


def check_trials_fit(asked: Mapping[str, float], nodes: Sequence[Mapping[str, float]], *,
                     where: str, node_types: Sequence[Mapping[str, float]] = ()) -> None:
    """Raise ConfigError unless some node, or some node type the autoscaler may start, fits."""
    if any(fits(asked, n) for n in [*nodes, *node_types]):
        return
    cpu, gpu = asked.get("cpu", 0.0), asked.get("gpu", 0.0)
    gpus = max((n.get("GPU", 0.0) for n in [*nodes, *node_types]), default=0.0)
    cpus = max((n.get("CPU", 0.0) for n in [*nodes, *node_types]), default=0.0)
    scope = f"{where} (node types of its cluster config included)" if node_types else where
    if gpu > gpus:
        have = f"{gpus:g} GPUs" if gpus == 0 or len(nodes) + len(node_types) == 1 else f"at most {gpus:g} GPUs on a node"
        fix = "0" if gpus == 0 else f"{gpus:g} or less"
        raise ConfigError(f"trials ask for gpu {gpu:g}; {scope} has {have}: set resources_per_trial.gpu: "
                          f"{fix}, or run on a GPU cluster")
    raise ConfigError(f"trials ask for cpu {cpu:g}; {scope} has at most {cpus:g} CPUs on a node: set "
                      f"resources_per_trial.cpu: {cpus:g} or less, or run on larger nodes")


def local_machine(num_cpus: int | None) -> list[dict[str, float]]:
    """The one node a local Ray would start here: --num-cpus (or every CPU) and torch's GPUs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [{"CPU": float(num_cpus if num_cpus is not None else os.cpu_count() or 1), "GPU": float(gpus)}]


def running_cluster() -> list[dict[str, float]]:
    """The alive nodes of the Ray cluster this driver is connected to."""
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def autoscaler_node_types(path: Path = BOOTSTRAP_CONFIG) -> list[dict[str, float]]:
    """The resources of every node type the cluster's autoscaler may start (empty when this is
    not the head node of a launcher-made cluster)."""
    import yaml

    p = path.expanduser()
    if not p.is_file():
        return []
    try:
        cfg: Any = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    types = cfg.get("available_node_types") or {}
    return [dict(t.get("resources") or {}) for t in types.values()
            if isinstance(t, Mapping) and (t.get("max_workers", 0) or 0) > 0]
