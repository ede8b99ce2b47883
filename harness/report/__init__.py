"""Reports: one data model (Run, RunSet) and one view model (view.py: `report_view`) rendered as
terminal text and HTML; the JSON report is the RunSet itself, and reads back into one.

    runset = RunSet((Run.from_fingerprints(old_fp, new_fp, comparison),), fail_on="warn")
    print(render_text(runset))
    write_json(runset, "reports/qabi.json")     # validated against qabi-report.schema.json
    write_reports(runset, "reports")           # reports/qabi.json + reports/index.html
    render_html(runset_from_json(load_report("reports/qabi.json")))    # the same page again
"""

from __future__ import annotations

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

__all__ = [
    "EXIT_CODES", "OUTCOMES", "SCHEMA_PATH", "Migration", "Outcome", "ReportVerdict", "ReportView", "Run", "RunSet", "RunStatus",
    "RunView", "ShardInfo", "SubjectGroup", "as_runset", "decide", "describe_build", "escape_controls", "group_drifts", "load_report",
    "provenance", "render_html", "render_text", "report_schema", "report_view", "run_views", "runset_from_json",
    "to_json", "undecided_reason", "validate_report", "verdict_line", "with_facts", "write_html", "write_json", "write_reports",
]
