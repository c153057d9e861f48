"""The sweep's one progress display, its heartbeat file, and quieter Ray logs.

`SweepProgress` is a Tune callback in the driver. On a terminal it keeps one live display (rich,
three lines): a bar, trials done / running / pending / failed with elapsed time and an ETA, and
the last finished trial's headline figures (test balanced accuracy, tail eKLD). Elsewhere (CI logs, pipes, --verbose) it
prints one plain line per finished, stopped or failed trial instead. Every few seconds, and at
the end, it writes `<sweep>/_status.json` (running trials with their start times, counts,
updated_at), which `git-ray status` reads while the sweep runs. Ray Tune's own boxes and status
tables are off unless --verbose (verbose 0 with Tune's older reporter, see runner.init_ray);
`quiet_ray` filters the Ray messages that do not concern a user of git_ray.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, TextIO

from ray import tune

from git_ray import storage
from git_ray.sweep.console import fmt_duration, trial_label
from git_ray.sweep.spec import FUSED_KEY, SweepSpec
from git_ray.sweep.status import HEARTBEAT_EVERY_S, STATUS_FILE


# Ray messages that say nothing a git_ray user can act on (substrings, any case).
NOISE = (
    "token authentication is enabled",  # Ray >= 2.59 on every new local cluster (it stays on)
    "is deprecated",  # Ray's own internals moving between versions
)
# The loggers that emit them (a logger's filters see only records logged to it by name).
NOISY_LOGGERS = ("ray", "ray.tune", "ray._private.authentication.authentication_token_setup",
                 "ray._private.worker", "ray.tune.tune", "ray.tune.impl.tuner_internal")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage().lower()
        return not any(n.lower() in msg for n in NOISE)


def quiet_ray(stream: TextIO | None = None) -> None:
    """After `import ray`, before ray.init: Ray's noise dropped, workers' repeated lines
    deduplicated, and no colour codes in worker prefixes when the output is not a terminal."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not (stream or sys.stdout).isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # CI logs and pipes: no escape codes
    # On the loggers, not the handlers of "ray": ray.init replaces those.
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    import warnings

    for text in ("token", "deprecated"):
        warnings.filterwarnings("ignore", message=f".*{text}.*", module="ray")


class SweepProgress(tune.Callback):
    """Progress of a sweep: live display or plain lines, plus the `_status.json` heartbeat."""

    def __init__(self, spec: SweepSpec, *, live: bool | None = None, verbose: bool = False,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.time,
                 heartbeat_every_s: float = HEARTBEAT_EVERY_S):
        self.spec, self.clock, self.every = spec, clock, heartbeat_every_s
        self._stream = stream
        self.live = (self.stream.isatty() and not verbose) if live is None else live
        self.axes = list(spec.grid) + (list(spec.search.space) if spec.search else [])
        self.total = spec.num_trials()
        self.started = clock()
        self.running: dict[str, dict[str, Any]] = {}  # Tune trial id -> git_ray id, params, start
        self.counts = {"done": 0, "already": 0, "stopped": 0, "failed": 0}
        self.trial_seconds: list[float] = []
        self.last: str = ""
        self.slots = 1
        self._beat = -float("inf")
        self._progress = None  # the rich Live display, started on the first event

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state (for --resume): keep the numbers,
        # drop the terminal handles; a restored sweep draws on its own stdout.
        state = dict(self.__dict__)
        state.update(_stream=None, _progress=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restored by --resume: the counts still hold (finished trials do not finish again), but
        # the trials that were running restart, and elapsed time starts from now.
        self.__dict__.update(state)
        self.running, self.started, self._beat = {}, self.clock(), -float("inf")

    # -- Tune hooks --------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running[trial.trial_id] = {"trial_id": self._git_ray_id(trial), "params": self._params(trial),
                                        "started_at": self.clock(), "members": _members(trial)}
        self.slots = max(self.slots, len(self.running))
        self._refresh(force=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        start = self.running.pop(trial.trial_id, {}).get("started_at")
        r = trial.last_result or {}
        label = trial_label(trial.config, self.axes) or trial.trial_id
        if FUSED_KEY in trial.config and r.get("done"):  # a fused group: its members' counts
            trained = r["finished"] + r["failed_members"]
            self.counts["done"] += r["finished"]
            self.counts["already"] += r["skipped"]
            self.counts["failed"] += r["failed_members"]
            if trained and start is not None:  # one member's share of the group's wall time
                self.trial_seconds += [(self.clock() - start) / trained] * trained
            self._line(f"fused group of {r['members']}: {r['finished']} finished, {r['skipped']} already "
                       f"in results, {r['failed_members']} failed")
        elif "test_balanced_accuracy" in r:
            skipped = bool(r.get("skipped"))
            self.counts["already" if skipped else "done"] += 1
            if not skipped:
                # Wall time from start to finish (worker start-up and evaluation included) is what
                # the remaining trials will cost; train_seconds only where the start was missed.
                self.trial_seconds.append(self.clock() - start if start is not None
                                          else float(r.get("train_seconds") or 0.0))
            how = "already in results" if skipped else f"{r.get('train_seconds', 0):.1f}s"
            self.last = (f"{label}: balanced accuracy {r['test_balanced_accuracy']:.3f}, "
                         f"eKLD tail {r['ekld_tail']:.4f} ({how})")
            self._line(f"finished {self.last}")
        else:
            self.counts["stopped"] += 1
            self._line(f"stopped early {label} at epoch {r.get('epoch', '?')}")
        self._refresh(force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.pop(trial.trial_id, None)
        self.counts["failed"] += _members(trial)
        self._line(f"FAILED {trial_label(trial.config, self.axes) or trial.trial_id}: see the failed/ table")
        self._refresh(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.running.clear()
        self._refresh(force=True, state="finished")
        self.close()

    # -- what is shown -----------------------------------------------------------------------
    def finished(self) -> int:
        return sum(self.counts.values())

    def pending(self) -> int:
        return max(0, self.total - self.finished() - sum(r["members"] for r in self.running.values()))

    def eta_s(self) -> float | None:
        """Remaining trials x their measured mean length / the slots seen running at once."""
        if not self.trial_seconds:
            return None
        mean = sum(self.trial_seconds) / len(self.trial_seconds)
        elapsed_running = sum(self.clock() - r["started_at"] for r in self.running.values())
        left = (self.pending() + sum(r["members"] for r in self.running.values())) * mean - elapsed_running
        return max(0.0, left / self.slots)

    def summary(self) -> str:
        c = self.counts
        done = c["done"] + c["already"]
        already = f" ({c['already']} already stored)" if c["already"] else ""
        text = (f"{done}/{self.total} done{already}, {len(self.running)} running, {self.pending()} pending, "
                f"{c['failed']} failed" + (f", {c['stopped']} stopped" if c["stopped"] else "")
                + f" | {fmt_duration(self.clock() - self.started)} elapsed, ETA {fmt_duration(self.eta_s())}")
        return text

    def _line(self, text: str) -> None:
        if self.live:
            self._ensure_live()
            self._progress.console.print(f"[git-ray] {text}", markup=False, highlight=False)
        else:
            print(f"[git-ray] {text}", file=self.stream, flush=True)

    def _ensure_live(self) -> None:
        if self._progress is not None:
            return
        from rich.console import Console
        from rich.live import Live

        # get_renderable: the display is redrawn twice a second, so elapsed time and ETA move
        # between trial events too.
        self._progress = Live(get_renderable=self._render, console=Console(file=self.stream),
                              refresh_per_second=2, transient=False, redirect_stdout=True,
                              redirect_stderr=True)
        self._progress.start()

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        bar = Table.grid(padding=(0, 1))
        bar.add_row(Text("sweep", style="bold"), ProgressBar(total=max(1, self.total),
                                                              completed=self.finished(), width=30),
                    Text(f"{self.finished()}/{self.total}"))
        lines = [bar, Text(self.summary())]
        if self.last:
            lines.append(Text(f"last: {self.last}", style="dim", no_wrap=True, overflow="ellipsis"))
        return Group(*lines)

    def _refresh(self, force: bool = False, state: str = "running") -> None:
        if self.live:
            self._ensure_live()
            self._progress.refresh()
        now = self.clock()
        # A trial starting or ending is news, but not more than once a second: a resumed sweep
        # "finishes" its stored trials in a burst, and each beat is one PUT on an object store.
        if state != "running" or now - self._beat >= (min(1.0, self.every) if force else self.every):
            self._beat = now
            self.write_heartbeat(state)

    def close(self) -> None:
        """Stop the live display, leaving its last state on screen (the driver prints the totals)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- the heartbeat -----------------------------------------------------------------------
    def heartbeat(self, state: str = "running", phase: str = "trials") -> dict[str, Any]:
        now = self.clock()
        return {"sweep": self.spec.name, "state": state, "phase": phase, "pid": os.getpid(),
                "updated_at": now, "updated_at_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
                "started_at": self.started, "heartbeat_every_s": self.every, "total": self.total,
                "counts": {**self.counts, "running": len(self.running), "pending": self.pending()},
                "running": [{"trial_id": r["trial_id"], "tune_trial_id": tid, "started_at": r["started_at"],
                             "params": r["params"]} for tid, r in self.running.items()],
                "eta_s": self.eta_s()}

    def write_heartbeat(self, state: str = "running", phase: str = "trials") -> None:
        """Write `_status.json`; phase "generators" while phase 0 trains them, else "trials"."""
        try:
            storage.write_bytes(storage.join(self.spec.root, STATUS_FILE),
                                json.dumps(self.heartbeat(state, phase), default=str).encode())
        except OSError as err:  # the heartbeat is a convenience: never fail a sweep for it
            print(f"[git-ray] could not write {STATUS_FILE}: {err}", file=sys.stderr, flush=True)

    # -- helpers -----------------------------------------------------------------------------
    def _params(self, trial: Any) -> dict[str, Any]:
        return {k: v for k, v in trial.config.items() if not str(k).startswith("__")}

    def _git_ray_id(self, trial: Any) -> str | None:
        try:
            return self.spec.trial_config(self._params(trial)).fingerprint()
        except Exception:  # noqa: BLE001 - a label for people; the trial itself reports any config error
            return None


def _members(trial: Any) -> int:
    """How many sweep trials a Tune trial stands for: a fused group's members, else 1."""
    return len(trial.config.get(FUSED_KEY, [None]))
