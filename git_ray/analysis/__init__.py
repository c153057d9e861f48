"""Analysis of git_ray results: tables, figures and a one-page HTML report, from Parquet only.

    from git_ray.analysis import analyze, report_text, load
    report = analyze(["results/quickstart"], out="analysis/")
    print(report_text(report))
    claims = claims_table(load("results/glyphs_invariance_cpu")["trials"])   # the paper's claims
"""
from git_ray.analysis.claims import claims_table, display_claims, findings
from git_ray.analysis.load import MixedSchemaWarning, Sweep, find_sweeps, load, read_sweep
from git_ray.analysis.report import Report, analyze, default_out, render_html, report_text
from git_ray.analysis.tables import effect_table, group_keys, summary_table

__all__ = [
    "MixedSchemaWarning", "Report", "Sweep", "analyze", "claims_table", "default_out", "display_claims",
    "effect_table", "find_sweeps", "findings", "group_keys", "load", "read_sweep", "render_html", "report_text",
    "summary_table",
]
