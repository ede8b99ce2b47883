"""Reports: one data model (Run, RunSet → view.py's grouping) rendered as terminal text and JSON.

    runset = RunSet((Run.from_fingerprints(old_fp, new_fp, comparison),), fail_on="warn")
    print(render_text(runset))
    write_json(runset, "reports/qabi.json")     # validated against qabi-report.schema.json

The HTML report renders the same `run_views()` (view.py) with jinja2.
"""

from __future__ import annotations

from harness.report.html import load_report, render_html, write_html, write_reports
from harness.report.jsonreport import SCHEMA_PATH, report_schema, to_json, validate_report, write_json
from harness.report.model import (
    EXIT_CODES,
    Outcome,
    ReportVerdict,
    Run,
    RunSet,
    RunStatus,
    as_runset,
    provenance,
)
from harness.report.text import render_text
from harness.report.view import RunView, SubjectGroup, describe_build, group_drifts, run_views, verdict_line

__all__ = [
    "EXIT_CODES", "SCHEMA_PATH", "Outcome", "ReportVerdict", "Run", "RunSet", "RunStatus", "RunView",
    "SubjectGroup", "as_runset", "describe_build", "group_drifts", "load_report", "provenance", "render_html",
    "render_text", "report_schema", "run_views", "to_json", "validate_report", "verdict_line", "write_html",
    "write_json", "write_reports",
]
