"""Terminal report: by run, then by subject (most severe first), then ONE verdict line."""

from __future__ import annotations

from harness.drift.model import Comparison, Severity
from harness.report.model import Run, RunSet, as_runset
from harness.report.view import RunView, describe_build, drift_line_label, run_views, verdict_line

DETAIL_LINES = 60


def _indent(text: str, prefix: str, limit: int = DETAIL_LINES) -> list[str]:
    lines = text.splitlines()
    out = [prefix + line for line in lines[:limit]]
    if len(lines) > limit:
        out.append(f"{prefix}… ({len(lines) - limit} more lines)")
    return out


def _run_text(view: RunView) -> list[str]:
    run = view.run
    out = [f"== {run.name}: {view.outcome} ==",
           f"   old: {describe_build(run.old)}",
           f"   new: {describe_build(run.new)}"]
    if run.status != "compared":
        out.append(f"   {run.status}: {run.reason}")
        return out
    if not view.groups:
        out.append("   no drift")
    for group in view.groups:
        tag = "waived" if group.waived else group.severity.upper()
        out.append(f"   {tag:<6} {group.subject}")
        width = max(len(drift_line_label(d)) for d in group.drifts)
        for drift in group.drifts:
            line = f"      {drift.severity:<5} {drift_line_label(drift):<{width}}  {drift.summary}"
            if drift.waived is not None:
                line += f"  [waived: {drift.waived}]"
            out.append(line)
            if drift.detail:
                out += _indent(drift.detail, "            ")
    if view.stale_waivers:
        out.append("   stale waivers (matched nothing):")
        for waiver in view.stale_waivers:
            out.append(f"      {waiver.where}: {waiver.describe()} — {waiver.reason}")
    return out


def render_text(result: RunSet | Run | Comparison, fail_on: Severity = "warn") -> str:
    """The whole terminal report; `fail_on` is used only when `result` is not a RunSet."""
    runset = as_runset(result, fail_on)
    lines: list[str] = []
    for view in run_views(runset):
        lines += _run_text(view)
        lines.append("")
    lines.append(verdict_line(runset))
    return "\n".join(lines) + "\n"
