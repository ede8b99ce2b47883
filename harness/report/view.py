"""The presentation model every renderer shares (text now, HTML later): runs → subjects → drifts.

Renderers only format; ordering, grouping, counting and wording live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.drift.model import SEVERITIES, Drift, Severity, severity_rank
from harness.drift.waivers import Waiver
from harness.report.model import Outcome, Run, RunSet


@dataclass(frozen=True)
class SubjectGroup:
    """The drifts of one device/table/structure/leaf, most severe first."""

    subject: str
    category: str
    key: str
    drifts: tuple[Drift, ...]

    @property
    def waived(self) -> bool:
        """Every drift of the group is waived."""
        return all(d.waived is not None for d in self.drifts)

    @property
    def severity(self) -> Severity:
        """The worst severity among unwaived drifts (among all if every one is waived)."""
        pool = [d for d in self.drifts if d.waived is None] or list(self.drifts)
        return min((d.severity for d in pool), key=severity_rank)

    def sort_key(self) -> tuple[int, int, str]:
        return (1 if self.waived else 0, severity_rank(self.severity), self.subject)


@dataclass(frozen=True)
class RunView:
    run: Run
    outcome: Outcome
    groups: tuple[SubjectGroup, ...]
    stale_waivers: tuple[Waiver, ...]
    counts: Mapping[str, int]          # unwaived per severity, and "waived"
    failing: int                       # unwaived drifts at fail_on or above


def group_drifts(drifts: tuple[Drift, ...] | list[Drift]) -> tuple[SubjectGroup, ...]:
    by_subject: dict[tuple[str, str], list[Drift]] = {}
    for drift in drifts:
        by_subject.setdefault((drift.category, drift.subject), []).append(drift)
    groups = []
    for (category, subject), items in by_subject.items():
        items.sort(key=lambda d: (d.waived is not None, severity_rank(d.severity), d.path))
        keys = {d.key for d in items}
        groups.append(SubjectGroup(subject, category, keys.pop() if len(keys) == 1 else "", tuple(items)))
    groups.sort(key=SubjectGroup.sort_key)
    return tuple(groups)


def run_view(run: Run, fail_on: Severity) -> RunView:
    comparison = run.comparison
    if comparison is None:
        return RunView(run, run.outcome(fail_on), (), (), {s: 0 for s in (*SEVERITIES, "waived")}, 0)
    return RunView(run, run.outcome(fail_on), group_drifts(comparison.drifts), comparison.stale_waivers,
                   comparison.counts(), len(comparison.unwaived(fail_on)))


def run_views(result: RunSet) -> tuple[RunView, ...]:
    return tuple(run_view(run, result.fail_on) for run in result.runs)


def describe_build(provenance: Mapping[str, Any]) -> str:
    """`debian:bookworm — QEMU 7.2.15 (1:7.2+dfsg-7+deb12u13), sha256 0123456789ab`."""
    parts = []
    spec = provenance.get("spec")
    version = provenance.get("version")
    package = provenance.get("package_version")
    sha = provenance.get("sha256")
    if version:
        parts.append(f"QEMU {version}" + (f" ({package})" if package else ""))
    elif package:
        parts.append(str(package))
    if isinstance(sha, str) and sha:
        parts.append(f"sha256 {sha[:12]}")
    text = ", ".join(parts)
    if spec:
        text = f"{spec} — {text}" if text else str(spec)
    return text or "(no build provenance)"


def verdict_line(result: RunSet) -> str:
    """The one verdict line that ends every text report."""
    views = run_views(result)
    verdict = result.verdict
    compared = [v for v in views if v.run.status == "compared"]
    errors = [v for v in views if v.run.status == "error"]
    unsupported = [v for v in views if v.run.status == "unsupported"]
    totals = {s: sum(v.counts.get(s, 0) for v in compared) for s in (*SEVERITIES, "waived")}
    failing = sum(v.failing for v in compared)
    drifting = sum(1 for v in compared if v.outcome == "drift")
    parts = []
    if verdict == "drift":
        parts.append(f"{failing} unwaived drift{'s' if failing != 1 else ''} at {result.fail_on} or above "
                     f"in {drifting} of {len(compared)} compared run{'s' if len(compared) != 1 else ''}")
    elif compared:
        parts.append(f"{len(compared)} run{'s' if len(compared) != 1 else ''} compared, "
                     f"no unwaived drift at {result.fail_on} or above")
    shown = [f"{totals[s]} {s}" for s in SEVERITIES if totals[s]]
    if shown:
        parts.append("unwaived: " + ", ".join(shown))
    if totals["waived"]:
        parts.append(f"{totals['waived']} waived")
    if errors:
        parts.append(f"{len(errors)} run{'s' if len(errors) != 1 else ''} could not be decided")
    if unsupported:
        parts.append(f"{len(unsupported)} unsupported")
    if not views:
        parts.append("nothing was compared")
    elif not compared and not errors:
        parts.append("no run was compared")
    return f"verdict: {verdict.upper()} — " + "; ".join(parts)


def drift_line_label(drift: Drift) -> str:
    return drift.path if drift.path else "(whole)"

