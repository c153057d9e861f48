"""How sweep reports read for people: durations, config values, trial labels, plain tables.

Shared by the progress display, `--dry-run` and `git-ray status`; no Ray, no rich here, so the
commands that must not start Ray can use it.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def fmt_duration(seconds: float | None) -> str:
    """3725 -> '1:02:05', 65 -> '1:05', None -> '--'."""
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def value_text(v: Any) -> str:
    """A grid value as a short cell: sub-configs as their values joined by '/', floats to 4 digits."""
    if isinstance(v, Mapping):
        return "/".join(value_text(x) for x in v.values())
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trial_label(config: Mapping[str, Any], axes: Sequence[str]) -> str:
    """The values of the keys that vary across a sweep, e.g. `dataset.imbalance_ratio=50, ...`."""
    return ", ".join(f"{k}={value_text(config.get(k))}" for k in axes)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A left-aligned plain-text table (readable in logs and pipes, no colour codes)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]
