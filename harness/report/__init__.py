"""Reports: one data model (Run, RunSet) and one view model (view.py: `report_view`) rendered as
terminal text and HTML; the JSON report is the RunSet itself, and reads back into one.

    runset = RunSet((Run.from_fingerprints(old_fp, new_fp, comparison),), fail_on="warn")
    print(render_text(runset))
    write_json(runset, "reports/qabi.json")     # validated against qabi-report.schema.json
    write_reports(runset, "reports")           # reports/qabi.json + reports/index.html
    render_html(runset_from_json(load_report("reports/qabi.json")))    # the same page again
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_attributes

if TYPE_CHECKING:
    from harness.report.html import load_report, render_html, write_html, write_reports
    from harness.report.jsonreport import (
        SCHEMA_PATH,
        report_schema,
        runset_from_json,
        to_json,
        validate_report,
        with_facts,
        write_json,
    )
    from harness.report.model import (
        EXIT_CODES,
        OUTCOMES,
        Migration,
        Outcome,
        ReportVerdict,
        Run,
        RunSet,
        RunStatus,
        ShardInfo,
        as_runset,
        decide,
        provenance,
    )
    from harness.report.text import escape_controls, render_text
    from harness.report.view import (
        ReportView,
        RunView,
        SubjectGroup,
        describe_build,
        group_drifts,
        report_view,
        run_views,
        undecided_reason,
        verdict_line,
    )

# each name is imported on first use: reading a report needs no HTML renderer, a check no jinja2
_LAZY = {
    "EXIT_CODES": "harness.report.model", "OUTCOMES": "harness.report.model", "decide": "harness.report.model",
    "undecided_reason": "harness.report.view", "Migration": "harness.report.model",
    "Outcome": "harness.report.model", "ReportVerdict": "harness.report.model",
    "ReportView": "harness.report.view", "Run": "harness.report.model", "RunSet": "harness.report.model",
    "RunStatus": "harness.report.model", "RunView": "harness.report.view",
    "SCHEMA_PATH": "harness.report.jsonreport", "ShardInfo": "harness.report.model",
    "SubjectGroup": "harness.report.view", "as_runset": "harness.report.model",
    "describe_build": "harness.report.view", "escape_controls": "harness.report.text",
    "group_drifts": "harness.report.view", "load_report": "harness.report.html",
    "provenance": "harness.report.model", "render_html": "harness.report.html",
    "render_text": "harness.report.text", "report_schema": "harness.report.jsonreport",
    "report_view": "harness.report.view", "run_views": "harness.report.view",
    "runset_from_json": "harness.report.jsonreport", "to_json": "harness.report.jsonreport",
    "validate_report": "harness.report.jsonreport", "verdict_line": "harness.report.view",
    "with_facts": "harness.report.jsonreport", "write_html": "harness.report.html",
    "write_json": "harness.report.jsonreport", "write_reports": "harness.report.html"
}

__all__ = [
    "EXIT_CODES", "OUTCOMES", "SCHEMA_PATH", "Migration", "Outcome", "ReportVerdict", "ReportView", "Run", "RunSet", "RunStatus",
    "RunView", "ShardInfo", "SubjectGroup", "as_runset", "decide", "describe_build", "escape_controls", "group_drifts", "load_report",
    "provenance", "render_html", "render_text", "report_schema", "report_view", "run_views", "runset_from_json",
    "to_json", "undecided_reason", "validate_report", "verdict_line", "with_facts", "write_html", "write_json", "write_reports",
]

__getattr__ = lazy_attributes(__name__, _LAZY)
