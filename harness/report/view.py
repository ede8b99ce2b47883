"""The presentation model every renderer shares (terminal text and HTML): report → runs →
categories → subjects → drifts, built from a RunSet (`report_view`).

Renderers only format; ordering, grouping, counting, states and wording live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.categories import get, names
from harness.drift.model import SEVERITIES, Drift, Severity, at_least, severity_rank
from harness.drift.waivers import Waiver
from harness.report.model import Outcome, Run, RunSet

# What a category shows for a run: a severity, or one of these.
CategoryState = str   # break | warn | info | waived | unchanged | not-compared | unsupported | error


def count_drifts(drifts: tuple[Drift, ...] | list[Drift]) -> dict[str, int]:
    """Unwaived drifts per severity, plus "waived"."""
    out = {s: 0 for s in (*SEVERITIES, "waived")}
    for d in drifts:
        out["waived" if d.waived is not None else d.severity] += 1
    return out


def worst(counts: Mapping[str, int]) -> Severity | None:
    """The most severe severity with a non-zero count."""
    return next((s for s in SEVERITIES if counts.get(s)), None)


@dataclass(frozen=True)
class SubjectGroup:
    """The drifts of one device/table/structure/leaf, most severe first.

    `key` is the fingerprint entry key the drifts share ("" when they name none or several);
    `number` is the subject's position among its category's subjects in drift order (stable
    across sorting, for anchors)."""

    subject: str
    category: str
    key: str
    drifts: tuple[Drift, ...]
    number: int = 0

    @property
    def waived(self) -> bool:
        """Every drift of the group is waived."""
        return all(d.waived is not None for d in self.drifts)

    @property
    def severity(self) -> Severity:
        """The worst severity among unwaived drifts (among all if every one is waived)."""
        pool = [d for d in self.drifts if d.waived is None] or list(self.drifts)
        return min((d.severity for d in pool), key=severity_rank)

    @property
    def counts(self) -> dict[str, int]:
        return count_drifts(self.drifts)

    def sort_key(self) -> tuple[int, int, str]:
        return (1 if self.waived else 0, severity_rank(self.severity), self.subject)


@dataclass(frozen=True)
class CategoryView:
    name: str
    title: str
    state: CategoryState
    groups: tuple[SubjectGroup, ...]
    counts: Mapping[str, int]


@dataclass(frozen=True)
class RunView:
    index: int                         # position in the RunSet
    run: Run
    outcome: Outcome
    groups: tuple[SubjectGroup, ...]   # every subject, most severe first
    categories: tuple[CategoryView, ...]   # every registered category, in registry order
    stale_waivers: tuple[Waiver, ...]
    counts: Mapping[str, int]          # unwaived per severity, and "waived"
    failing: int                       # unwaived drifts at fail_on or above
    below_threshold: int               # unwaived drifts below fail_on


@dataclass(frozen=True)
class ReportView:
    runset: RunSet
    runs: tuple[RunView, ...]
    summary: str                       # the verdict line without "verdict: X — "
    images: tuple[str, ...]            # reference image hashes booted, in run order
    details: bool                      # the drifts carry their details (keys, longer text)

    @property
    def verdict(self) -> str:
        return self.runset.verdict

    @property
    def fail_on(self) -> Severity:
        return self.runset.fail_on


def group_drifts(drifts: tuple[Drift, ...] | list[Drift]) -> tuple[SubjectGroup, ...]:
    by_subject: dict[tuple[str, str], list[Drift]] = {}
    for drift in drifts:
        by_subject.setdefault((drift.category, drift.subject), []).append(drift)
    numbers: dict[str, int] = {}
    groups = []
    for (category, subject), items in by_subject.items():
        items.sort(key=lambda d: (d.waived is not None, severity_rank(d.severity), d.path))
        keys = {d.key for d in items} - {""}
        number = numbers[category] = numbers.get(category, -1) + 1
        groups.append(SubjectGroup(subject, category, keys.pop() if len(keys) == 1 else "", tuple(items), number))
    groups.sort(key=SubjectGroup.sort_key)
    return tuple(groups)


def _category_view(run: Run, name: str, groups: tuple[SubjectGroup, ...]) -> CategoryView:
    mine = tuple(g for g in groups if g.category == name)
    counts = count_drifts([d for g in mine for d in g.drifts])
    state: CategoryState
    if run.status != "compared":
        state = run.status
    elif run.comparison is not None and name not in run.comparison.categories:
        state = "not-compared"
    else:
        state = worst(counts) or ("waived" if counts["waived"] else "unchanged")
    return CategoryView(name, get(name).title, state, mine, counts)


def _shown(run: Run) -> tuple[str, ...]:
    """Every guest-side category; a host-side one (migration, vmstate, props) when the run compared it."""
    compared = run.comparison.categories if run.comparison is not None else ()
    return tuple(n for n in names() if not get(n).host_side or n in compared)


def run_view(run: Run, fail_on: Severity, index: int = 0) -> RunView:
    groups = group_drifts(run.drifts)
    counts = count_drifts(run.drifts)
    stale = run.comparison.stale_waivers if run.comparison is not None and run.status == "compared" else ()
    return RunView(index, run, run.outcome(fail_on), groups, tuple(_category_view(run, n, groups) for n in _shown(run)),
                   stale, counts, sum(counts[s] for s in SEVERITIES if at_least(s, fail_on)),
                   sum(counts[s] for s in SEVERITIES if not at_least(s, fail_on)))


def run_views(result: RunSet) -> tuple[RunView, ...]:
    return tuple(run_view(run, result.fail_on, i) for i, run in enumerate(result.runs))


def report_view(result: RunSet) -> ReportView:
    views = run_views(result)
    images: list[str] = []
    for run in result.runs:
        for side in ("old", "new"):
            image = run.image.get(side) if run.image else None
            if image and image not in images:
                images.append(image)
    details = result.details and any(run.status == "compared" for run in result.runs)
    return ReportView(result, views, _summary(result, views), tuple(images), details)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _summary(result: RunSet, views: tuple[RunView, ...]) -> str:
    compared = [v for v in views if v.run.status == "compared"]
    errors = sum(1 for v in views if v.run.status == "error")
    unsupported = sum(1 for v in views if v.run.status == "unsupported")
    totals = {s: sum(v.counts.get(s, 0) for v in compared) for s in (*SEVERITIES, "waived")}
    failing = sum(v.failing for v in compared)
    drifting = sum(1 for v in compared if v.outcome == "drift")
    parts = []
    if result.verdict == "drift":
        parts.append(f"{_plural(failing, 'unwaived drift')} at {result.fail_on} or above "
                     f"in {drifting} of {_plural(len(compared), 'compared run')}")
    elif compared:
        parts.append(f"{_plural(len(compared), 'run')} compared, no unwaived drift at {result.fail_on} or above")
    shown = [f"{totals[s]} {s}" for s in SEVERITIES if totals[s]]
    if shown:
        parts.append("unwaived: " + ", ".join(shown))
    if totals["waived"]:
        parts.append(f"{totals['waived']} waived")
    if errors:
        parts.append(f"{_plural(errors, 'run')} could not be decided")
    if unsupported:
        parts.append(f"{unsupported} unsupported")
    if not views:
        parts.append("nothing was compared")
    elif not compared and not errors:
        parts.append("no run was compared")
    return "; ".join(parts)


def verdict_line(result: RunSet) -> str:
    """The one verdict line that ends every text report."""
    return f"verdict: {result.verdict.upper()} — " + _summary(result, run_views(result))


def describe_build(provenance: Mapping[str, Any]) -> str:
    """`debian:bookworm — QEMU 7.2.15 (1:7.2+dfsg-7+deb12u13), sha256 0123456789ab`."""
    parts = []
    spec = provenance.get("spec")
    version = provenance.get("version")
    package = provenance.get("package_version")
    sha = provenance.get("sha256")
    if version:
        parts.append(f"QEMU {shown(version)}" + (f" ({shown(package)})" if package else ""))
    elif package:
        parts.append(shown(package))
    if isinstance(sha, str) and sha:
        parts.append(f"sha256 {sha[:12]}")
    text = ", ".join(parts)
    if spec:
        text = f"{shown(spec)} — {text}" if text else shown(spec)
    return text or "(no build provenance)"


def shown(value: Any) -> str:
    """A JSON value as text: strings as they are, anything else as JSON."""
    import json

    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def drift_line_label(drift: Drift) -> str:
    return drift.path if drift.path else "(whole)"


def waiver_where(waiver: Waiver) -> str:
    """Where a waiver was written (`waivers.toml:12`); for one read back from a JSON report,
    which does not keep its position in the file, the file alone."""
    if waiver.line or waiver.index:
        return waiver.where
    return waiver.source or "waivers"


def waiver_match(waiver: Waiver) -> str:
    """`category=smbios subject=smbios type 0 * path=fields.bios_version` (old/new when set)."""
    return waiver.describe()
