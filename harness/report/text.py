"""Terminal report: by run, then by subject (most severe first), then ONE verdict line.

Guest text (SMBIOS strings, ASL, error reasons) never reaches the terminal raw: every line is
passed through `escape_controls`, so an ESC or OSC sequence in a guest string shows as `\\x1b`.
"""

from __future__ import annotations

import textwrap

from harness.drift.model import Comparison, Severity
from harness.escape import escape_controls
from harness.report.model import Migration, Run, RunSet, as_runset
from harness.report.view import (
    RunImpact,
    RunView,
    SubjectGroup,
    describe_build,
    drift_line_label,
    report_view,
    waiver_match,
    waiver_where,
)

DETAIL_LINES = 60
WIDTH = 110           # subject lists of a shared change wrap here
COMPONENTS = 8        # components listed per OS in a run's impact
# C0 and C1 control characters and DEL; a tab is kept in report lines (ASL diffs may carry it).
def _indent(text: str, prefix: str, limit: int = DETAIL_LINES) -> list[str]:
    lines = text.splitlines()
    out = [prefix + line for line in lines[:limit]]
    if len(lines) > limit:
        out.append(f"{prefix}… ({len(lines) - limit} more lines)")
    return out


def _impact_text(impact: RunImpact) -> list[str]:
    """The run's guest impact: per OS the level, what is at that level and why (once when
    Windows and Linux agree)."""
    out = [f"   impact: {impact.short}"]
    for side in impact.both[:1] if impact.alike else impact.both:
        if side.level == "none":
            continue
        if not impact.alike:
            out.append(f"      {side.name} {side.level}:")
        for component in side.components[:COMPONENTS]:
            out.append(f"         {component}")
        if len(side.components) > COMPONENTS:
            out.append(f"         … and {len(side.components) - COMPONENTS} more")
        out += [f"         why: {why}" for why in side.reasons]
    return out


def _entry_head(group: SubjectGroup) -> list[str]:
    tag = "waived" if group.waived else group.severity.upper()
    impact = group.impact
    # the impact note is one unbreakable word (no-break spaces) at the end of the title
    level = f"  [Windows {impact['windows']} · Linux {impact['linux']}]".replace(" ", "\xa0") if impact["windows"] else ""
    lines = [line.replace("\xa0", " ") for line in
             textwrap.wrap(group.title + level, WIDTH, initial_indent=f"   {tag:<6} ", subsequent_indent=" " * 10,
                           break_on_hyphens=False, break_long_words=False)]
    if group.shared:
        lines.append(f"          (shown once, for {group.drifts[0].subject})")
    return lines


def _run_text(view: RunView) -> list[str]:
    run = view.run
    out = [f"== {run.name}: {view.outcome} ==",
           f"   old: {describe_build(run.old)}",
           f"   new: {describe_build(run.new)}"]
    if run.migration is not None:
        out.append(f"   {migration_line(run.migration)}")
    if run.status != "compared":
        out.append(f"   {run.status}: {run.reason}")
        return out
    if view.impact is not None:
        out += _impact_text(view.impact)
    out += [f"   note: {note}" for note in run.comparison.notes] if run.comparison is not None else []
    if not view.groups:
        out.append("   no drift")
    elif view.shared_changes:
        out.append(f"   {len(run.drifts)} drifts shown as {len(view.groups)} entries "
                   f"({view.shared_changes} shared by several subjects)")
    for group in view.groups:
        out += _entry_head(group)
        width = max(len(drift_line_label(d)) for d in group.shown)
        for drift in group.shown:
            line = f"      {drift.severity:<5} {drift_line_label(drift):<{width}}  {drift.summary}"
            if drift.waived is not None:
                line += f"  [waived: {drift.waived}]"
            out.append(line)
            if drift.detail:
                out += _indent(drift.detail, "            ")
    if view.stale_waivers:
        out.append("   stale waivers (matched nothing):")
        for waiver in view.stale_waivers:
            out.append(f"      {waiver_where(waiver)}: {waiver_match(waiver)} — {waiver.reason}")
    return out


def migration_line(migration: Migration) -> str:
    """`migration both: failed (forward ok 1.2s, rollback failed 0.9s) in 84.6s: <error>`."""
    legs = ", ".join(f"{leg.get('direction')} {leg.get('status')}"
                     + (f" {leg['seconds']:.1f}s" if isinstance(leg.get("seconds"), int | float) else "")
                     for leg in migration.legs)
    text = f"migration {migration.direction}: {migration.status}" + (f" ({legs})" if legs else "")
    if migration.seconds is not None:
        text += f" in {migration.seconds:.1f}s"
    return text + (f": {migration.error}" if migration.error else "")


def render_text(result: RunSet | Run | Comparison, fail_on: Severity = "warn") -> str:
    """The whole terminal report; `fail_on` is used only when `result` is not a RunSet."""
    report = report_view(as_runset(result, fail_on))
    lines: list[str] = []
    if report.impact_line:
        lines += [f"impact: {report.impact_line}", ""]
    for view in report.runs:
        lines += _run_text(view)
        lines.append("")
    lines.append(f"verdict: {report.verdict.upper()} — {report.summary}")
    return "\n".join(escape_controls(line) for line in lines) + "\n"
