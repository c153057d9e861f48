"""Analysis of git_ray results: tables, figures and a one-page HTML report, from Parquet only.

    from git_ray.analysis import analyze, report_text, load
    report = analyze(["results/quickstart"], out="analysis/")
    print(report_text(report))
"""
from git_ray.analysis.load import MixedSchemaWarning, Sweep, find_sweeps, load, read_sweep
from git_ray.analysis.report import Report, analyze, default_out, render_html, report_text
from git_ray.analysis.tables import effect_table, group_keys, summary_table

__all__ = [
    "MixedSchemaWarning", "Report", "Sweep", "analyze", "default_out", "effect_table", "find_sweeps", "group_keys",
    "load", "read_sweep", "render_html", "report_text", "summary_table",
]
