"""The `git-ray analyze` engine: results folders in, tables + figures + a one-page HTML report out.

    report = analyze(["results/quickstart"], out="results/quickstart/analysis")
    print(report_text(report))

With `out`, writes every table as CSV (numbers) and Markdown (mean ± std), every figure as PNG,
and report.html (tables and figures inline: one shareable file). Without `out`, nothing is
written; the Report still holds everything.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import re
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

import git_ray
from git_ray import storage
from git_ray.analysis import figures as F
from git_ray.analysis.claims import (
    EFFECT_COLUMN, FAILS, HOLDS, MISSING, claims_markdown, claims_table, display_claims, findings,
)
from git_ray.analysis.load import Sweep, find_sweeps, load
from git_ray.analysis.search import fig_study, find_study
from git_ray.analysis.tables import (
    METRICS, REPLICATE_COLUMNS, add_derived, display_effect, display_summary, effect_table, group_keys,
    summary_table, to_markdown,
)

# Printed in the terminal (every metric is in the CSV and Markdown).
PRINT_METRICS = ("balanced_accuracy", "few_accuracy", "tail_accuracy", "ekld_mean", "ekld_tail",
                 "ekld_head", "ekld_size_spearman")

CAPTIONS = {
    "claims": "The paper's claims (METHOD.md, 'What the paper reports') per nuisance: the effect in these "
              "results with a bootstrap 95% interval over seeds and instances (n units: trials, or pairs of "
              "trials that differ only in GIT / oracle), and a verdict.",
    "summary": "Metrics per configuration: mean ± std over seeds and dataset instances (n_trials runs each).",
    "git_effect": "GIT minus no-GIT for the same configuration (seeds averaged on both sides). "
                  "Negative Δ eKLD = more invariant with GIT; positive Δ accuracy = better with GIT.",
    "oracle_effect": "Oracle augmentation minus none for the same configuration (the upper bound).",
    "tail": "The smallest third of classes: tail eKLD and tail accuracy per method and augmentation.",
    "failed": "Trials that failed after all their retries.",
    "ekld_vs_size": "eKLD per class against the class's training size (log x): the paper's central plot. "
                    "Lines: mean per class size (binned when sizes are many), band: ±1 std, dots: single classes.",
    "accuracy_vs_size": "Per-class test accuracy against training class size.",
    "tail_effect": "Tail eKLD (lower is better) and tail accuracy with and without GIT / oracle augmentation.",
    "learning_curves": "Validation balanced accuracy per epoch.",
}


@dataclass
class Report:
    """Everything `git-ray analyze` computed: numeric tables, their printable forms, PNG figures."""

    sweeps: list[Sweep]
    group_keys: list[str]
    averaged: list[str]
    counts: dict[str, int]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    display: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    findings: str = ""
    out: str | None = None

    @property
    def text(self) -> str:
        return report_text(self)


def default_out(paths: str | Sequence[str]) -> str:
    """Where `git-ray analyze` writes when no --out is given: `<first results folder>/analysis`
    (a folder without trials/, so a later analyze of the parent does not take it for a sweep)."""
    first = paths if isinstance(paths, str) else list(paths)[0]
    return storage.join(str(first), "analysis")


def analyze(paths: str | Sequence[str], out: str | None = None, *, dpi: int = 110) -> Report:
    """Read the results under `paths` (sweep folders or folders of sweeps, local or URIs), build
    the tables and figures, and write them (CSV, Markdown, PNG, report.html) into `out` if given.

    Raises git_ray.config.ConfigError when a path holds no results.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    sweeps = find_sweeps(paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load(paths)
    notes = [str(w.message) for w in caught]
    for w in caught:  # still a warning for callers, and a note in the report
        warnings.warn(w.message, w.category, stacklevel=2)

    trials = add_derived(data["trials"], data["per_class"])
    per_class = data["per_class"].merge(trials[["sweep", "trial_id", "method", "augmentation"]],
                                        on=["sweep", "trial_id"])
    keys = group_keys(trials)
    averaged = [c for c in REPLICATE_COLUMNS if c in trials and trials[c].nunique() > 1]
    rep = Report(sweeps=sweeps, group_keys=keys, averaged=averaged, notes=notes, out=out,
                 counts={"trials": len(trials), "per_class": len(per_class), "epochs": len(data["epochs"]),
                         "failed": len(data["failed"])})

    # The claims come first: the table at the top of the report, the first lines printed.
    rep.tables["claims"] = claims_table(trials)
    rep.display["claims"] = display_claims(rep.tables["claims"])
    rep.findings = findings(rep.tables["claims"], trials)
    rep.tables["summary"] = summary_table(trials, keys)
    rep.display["summary"] = display_summary(rep.tables["summary"], keys or ["group"])
    for name, flag in (("git_effect", "augment_git"), ("oracle_effect", "augment_oracle")):
        eff = effect_table(trials, flag)
        if eff is not None:
            rep.tables[name] = eff
            rep.display[name] = display_effect(eff, [k for k in keys if k != flag])
        elif flag in trials and trials[flag].any() and not trials[flag].all():
            rep.notes.append(f"{flag}: runs with and without it share no configuration to compare")
    rep.tables["tail"] = F.tail_effect(trials)
    rep.display["tail"] = rep.tables["tail"]
    if len(data["failed"]):
        rep.tables["failed"] = data["failed"][["sweep", "trial_id", "dataset_source", "dataset_nuisance",
                                               "attempts", "error", "failed_at"]]
        rep.display["failed"] = rep.tables["failed"]
        rep.notes.append(f"{len(data['failed'])} trial(s) failed after all retries (see the failed table)")

    figs = {"ekld_vs_size": lambda: F.fig_ekld_vs_size(per_class),
            "accuracy_vs_size": lambda: F.fig_accuracy_vs_size(per_class),
            "tail_effect": lambda: F.fig_tail_effect(trials)}
    if len(data["epochs"]):
        figs["learning_curves"] = lambda: F.fig_learning_curves(data["epochs"], trials)
    for name, make in figs.items():
        rep.figures[name] = F.to_png(make(), dpi)
    for sw in sweeps:
        found = find_study(sw, trials, data["epochs"])
        rep.notes.extend(found.notes)
        if found.study is not None:
            fig, notes = fig_study(found)
            rep.notes.extend(notes)
            rep.figures[f"search_{sw.name}"] = F.to_png(fig, dpi)

    if out is not None:
        _write(rep, out)
    return rep


def _write(rep: Report, out: str) -> None:
    for name, df in rep.tables.items():
        md = claims_markdown(df) if name == "claims" else to_markdown(rep.display[name])
        storage.write_bytes(storage.join(out, f"{name}.csv"), df.to_csv(index=False).encode())
        storage.write_bytes(storage.join(out, f"{name}.md"), md.encode())
        rep.files += [f"{name}.csv", f"{name}.md"]
    for name, png in rep.figures.items():
        storage.write_bytes(storage.join(out, f"fig_{name}.png"), png)
        rep.files.append(f"fig_{name}.png")
    storage.write_bytes(storage.join(out, "report.html"), render_html(rep).encode())
    rep.files.append("report.html")


def caption(name: str) -> str:
    if name.startswith("search_"):
        return ("Optuna search: each trial's objective in order, the best so far, and how much of the "
                "objective's variance each searched parameter explains.")
    return CAPTIONS.get(name, "")


def _with_print_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Keys and counts, and of the metrics only PRINT_METRICS (a terminal is narrow)."""
    def keep(col: str) -> bool:
        metric = col.removeprefix("Δ ")
        return metric not in METRICS or metric in PRINT_METRICS
    return df[[c for c in df.columns if keep(c)]]


def report_text(rep: Report) -> str:
    """The printable summary: counts, grouping, main tables, notes and files written."""
    c = rep.counts
    lines = [f"git-ray analyze: {len(rep.sweeps)} sweep(s) ({', '.join(s.name for s in rep.sweeps)}): "
             f"{c['trials']} finished trials, {c['per_class']} per-class rows, {c['epochs']} epoch rows, "
             f"{c['failed']} failed",
             "grouped by: " + (", ".join(rep.group_keys) or "(nothing varies: one group)")
             + (f"; averaged over: {', '.join(rep.averaged)}" if rep.averaged else "")]
    if rep.findings:
        lines += ["", "Findings: " + rep.findings]
    if "claims" in rep.display:
        lines += ["", "The paper's claims (effect [bootstrap 95% interval] (n units), verdict):", claims_text(rep)]
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 40):
        for name, title in (("summary", "Summary (mean ± std)"), ("git_effect", "GIT minus no-GIT"),
                            ("oracle_effect", "Oracle minus none")):
            if name in rep.display:
                lines += ["", f"{title}:", _with_print_metrics(rep.display[name]).to_string(index=False)]
        if "failed" in rep.display:
            lines += ["", "Failed trials:", rep.display["failed"][["trial_id", "attempts", "error"]].to_string(index=False)]
    if rep.notes:
        lines += ["", "Notes:", *(f"  - {n}" for n in rep.notes)]
    git_line = git_tail_line(rep)
    if git_line:
        lines += ["", git_line]
    if rep.out is not None:
        lines += ["", f"wrote {len(rep.files)} files to {rep.out}: report.html, tables as CSV + Markdown, "
                      f"{len(rep.figures)} figures as PNG"]
    return "\n".join(lines)


def git_tail_line(rep: Report) -> str | None:
    """One sentence on GIT's effect on the tail, from the summary table (configurations with and
    without GIT, seeds averaged) and claim d's paired interval; None without both kinds."""
    summary = rep.tables.get("summary")
    if summary is None or "augment_git" not in summary or summary["augment_git"].nunique() < 2:
        return None
    means = summary.groupby("augment_git")["ekld_tail_mean"].mean()
    text = (f"GIT's effect on the tail: mean tail eKLD {means[False]:.4f} without GIT, "
            f"{means[True]:.4f} with GIT ({(means[True] / means[False] - 1) * 100:+.0f}%)")
    claims = rep.tables.get("claims")
    if claims is not None:
        d = claims[(claims["claim"] == "d") & claims["effect"].notna()]
        for r in d.to_dict("records"):
            text += (f"; {r['nuisance']}: paired change {r['effect']:+.4f} [{r['ci_low']:+.4f}, "
                     f"{r['ci_high']:+.4f}] over {r['n']} pairs, claim d {r['verdict']}")
    return text + "."


def claims_text(rep: Report) -> str:
    """The claims table for a terminal: a line per (claim, nuisance), its effects below, and the
    reason where it does not hold or cannot be judged."""
    lines = []
    for r in rep.display["claims"].to_dict("records"):
        provisional = " (PROVISIONAL: few units)" if "provisional:" in r["reason"] else ""
        lines.append(f"  ({r['claim']}) {r['nuisance']}: {r['verdict'].upper()}{provisional}  {r['statement']}")
        lines += [f"        {effect}" for effect in str(r[EFFECT_COLUMN]).split("; ") if effect != "-"]
        if r["verdict"] != HOLDS:  # a claim that holds needs no explanation on a terminal
            lines.append(f"        why: {r['reason']}")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.cap{color:#555;font-size:13px}.notes li{font-size:13px}h2{border-bottom:1px solid #ddd;margin-top:1.6em}
.scroll{max-width:100%;overflow-x:auto;margin:.5em 0 1.5em}.scroll table{margin:0}
#claims td{text-align:left;max-width:32em;white-space:normal}.findings{font-size:15px;line-height:1.5}
.v-holds{color:#176a2b;font-weight:600}.v-fails{color:#a3231b;font-weight:600}.v-missing{color:#8a6d00}"""


def render_html(rep: Report) -> str:
    """One self-contained page: tables as HTML, figures as inline base64 PNGs."""
    e = html.escape
    c = rep.counts
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>git-ray analysis: "
             f"{e(', '.join(s.name for s in rep.sweeps))}</title><style>{_CSS}</style></head><body>",
             f"<h1>git-ray analysis: {e(', '.join(s.name for s in rep.sweeps))}</h1>"]
    if rep.findings:  # the first paragraph: what the numbers say, in words
        parts.append(f"<p class='findings'>{e(rep.findings)}</p>")
    parts.append(
        f"<p>{c['trials']} finished trials, {c['per_class']} per-class rows, {c['epochs']} epoch rows, "
        f"{c['failed']} failed. Grouped by <code>{e(', '.join(rep.group_keys) or '(one group)')}</code>"
        + (f"; averaged over <code>{e(', '.join(rep.averaged))}</code>" if rep.averaged else "")
        + f". Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by git_ray {git_ray.__version__} "
        f"from {e(', '.join(s.root for s in rep.sweeps))}.</p>")
    if rep.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in rep.notes) + "</ul>")
    titles = {"claims": "The paper's claims", "summary": "Summary", "git_effect": "Effect of GIT",
              "oracle_effect": "Effect of the oracle", "tail": "The tail", "failed": "Failed trials"}
    for name, df in rep.display.items():
        parts.append(f"<h2>{e(titles.get(name, name))}</h2><p class='cap'>{e(caption(name))}</p>")
        table = df.to_html(index=False, border=0, na_rep="-", float_format=lambda v: f"{v:.4g}",
                           table_id=name)
        if name == "claims":  # colour the verdicts, a line per effect (to_html escapes; the text is ours)
            for verdict, cls in ((HOLDS, "v-holds"), (FAILS, "v-fails"), (MISSING, "v-missing")):
                table = table.replace(f"<td>{verdict}</td>", f"<td class='{cls}'>{verdict}</td>")
            table = re.sub(r"\(n=(\d+)\); ", r"(n=\1)<br>", table)
        # A wide table scrolls inside its box instead of widening the page.
        parts.append(f"<div class='scroll'>{table}</div>")
    parts.append("<h2>Figures</h2>")
    for name, png in rep.figures.items():
        b64 = base64.b64encode(png).decode()
        parts.append(f"<figure id='fig-{e(name)}'><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                     f"<figcaption class='cap'>{e(caption(name))}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
