"""The presentation model every renderer shares (terminal text and HTML): report → runs →
categories → entries → drifts, built from a RunSet (`report_view`).

An entry (`SubjectGroup`) is one subject's drifts, or one change shared by several subjects
(the drifts of one `group` id, harness/drift/impact.py `groups`): "same change in 30 devices:
S10, S18, …", shown once with its representative's diff. Counting stays per drift. Each run
carries its guest impact (`RunImpact`: per OS the worst level, its components and reasons) and
the report the impact over all runs.

Renderers only format; ordering, grouping, counting, states and wording live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.categories import get, names
from harness.drift.impact import LEVELS, groups
from harness.drift.impact import worst as worst_level
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


OS_NAMES: dict[str, str] = {"windows": "Windows", "linux": "Linux"}


@dataclass(frozen=True)
class SubjectGroup:
    """The drifts of one device/table/structure/leaf, most severe first; or, when `subjects` is
    set, one change shared by several subjects (`drifts` are its members, one per subject, and
    `shown` the one to display).

    `key` is the fingerprint entry key the drifts share ("" when they name none or several; a
    shared change's representative's); `number` is the entry's position among its category's
    entries in drift order (stable across sorting, for anchors)."""

    subject: str
    category: str
    key: str
    drifts: tuple[Drift, ...]
    number: int = 0
    subjects: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """The same change on several subjects."""
        return len(self.subjects) > 1

    @property
    def shown(self) -> tuple[Drift, ...]:
        """The drifts to display: a shared change once (its first member), else every drift."""
        return self.drifts[:1] if self.shared else self.drifts

    @property
    def title(self) -> str:
        """`acpi DSDT \\_SB.PCI0.S18`, or for a shared change `same change in 30 devices:
        acpi DSDT \\_SB.PCI0.{S10, S18, …}` (every subject named)."""
        if not self.shared:
            return self.subject
        prefix, rest = short_subjects(self.subjects, dots=self.category == "acpi")
        names_ = ", ".join(rest)
        listed = f"{prefix}{{{names_}}}" if prefix.endswith(".") else f"{prefix}{names_}" if prefix else names_
        return f"same change in {len(self.subjects)} {self.noun}: {listed}"

    @property
    def noun(self) -> str:
        """What the subjects of a shared change are: devices, tables, structures, leaves, entries."""
        if self.category == "acpi":
            return "devices" if all("\\" in s for s in self.subjects) else "tables"
        return {"pci": "devices", "smbios": "structures", "cpuid": "leaves"}.get(self.category, "entries")

    @property
    def impact(self) -> dict[str, str]:
        """The worst Windows and Linux level of its unwaived drifts (of all when every one is
        waived); "" when no drift carries an impact."""
        pool = [d for d in self.drifts if d.waived is None] or list(self.drifts)
        known = [d.impact for d in pool if d.impact is not None]
        if not known:
            return {"windows": "", "linux": ""}
        return {"windows": worst_level(i.windows for i in known), "linux": worst_level(i.linux for i in known)}

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


def short_subjects(subjects: tuple[str, ...], dots: bool = False) -> tuple[str, tuple[str, ...]]:
    """The subjects' common prefix (cut at a space, or with `dots` at a namespace dot) and what
    is left of each: `acpi DSDT \\_SB.PCI0.S10`, `….S18` → (`acpi DSDT \\_SB.PCI0.`, (S10, S18))."""
    import os.path

    common = os.path.commonprefix(list(subjects))
    cut = max(common.rfind(" "), common.rfind(".") if dots else -1) + 1
    if cut == 0 or any(len(s) <= cut for s in subjects):
        return "", subjects
    return subjects[0][:cut], tuple(s[cut:] for s in subjects)


@dataclass(frozen=True)
class OsImpact:
    """What one guest OS does about a run: the worst level of its unwaived drifts, the components
    at that level (as `run_impact` names them) and the distinct reasons (the impact rows' why)."""

    os: str                       # "windows" | "linux"
    level: str                    # none | driver | device | activation
    components: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def name(self) -> str:
        return OS_NAMES[self.os]


@dataclass(frozen=True)
class RunImpact:
    windows: OsImpact
    linux: OsImpact

    @property
    def both(self) -> tuple[OsImpact, OsImpact]:
        return (self.windows, self.linux)

    @property
    def alike(self) -> bool:
        """Windows and Linux have the same level, components and reasons."""
        w, x = self.windows, self.linux
        return (w.level, w.components, w.reasons) == (x.level, x.components, x.reasons)

    @property
    def short(self) -> str:
        """`Windows device · Linux driver`."""
        return " · ".join(f"{i.name} {i.level}" for i in self.both)


def run_impact_view(run: Run) -> RunImpact | None:
    impact = run.impact
    if impact is None:
        return None
    sides = []
    for os_name in OS_NAMES:
        level = str(impact[os_name]["level"])
        reasons: list[str] = []
        for d in run.drifts:
            if (d.waived is None and d.impact is not None and getattr(d.impact, os_name) == level
                    and level != "none" and d.impact.why not in reasons):
                reasons.append(d.impact.why)
        sides.append(OsImpact(os_name, level, tuple(impact[os_name]["components"]), tuple(reasons)))
    return RunImpact(*sides)


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
    impact: RunImpact | None = None    # compared runs only

    @property
    def shared_changes(self) -> int:
        """Entries that stand for several drifts (the same change on several subjects)."""
        return sum(1 for g in self.groups if g.shared)


@dataclass(frozen=True)
class ReportView:
    runset: RunSet
    runs: tuple[RunView, ...]
    summary: str                       # the verdict line without "verdict: X — "
    images: tuple[str, ...]            # reference image hashes booted, in run order
    details: bool                      # the drifts carry their details (keys, longer text)
    impact: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)
    # per OS, (level, number of compared runs at that level), worst first

    @property
    def impact_line(self) -> str:
        """`Windows: activation in 2 runs, device in 6 · Linux: device in 8 runs` ("" when no
        run was compared)."""
        parts = []
        for os_name, spread in self.impact.items():
            if spread:
                shown_ = ", ".join(f"{level} in {n}{' run' + ('s' if n != 1 else '') if i == 0 else ''}"
                                   for i, (level, n) in enumerate(spread))
                parts.append(f"{OS_NAMES[os_name]}: {shown_}")
        return " · ".join(parts)

    @property
    def verdict(self) -> str:
        return self.runset.verdict

    @property
    def fail_on(self) -> Severity:
        return self.runset.fail_on


def group_drifts(drifts: tuple[Drift, ...] | list[Drift]) -> tuple[SubjectGroup, ...]:
    """The entries of a run: each change shared by several subjects once, the other drifts by
    subject; most severe first (waived last)."""
    shared: dict[int, tuple[Drift, ...]] = {}      # id of its first member → members
    in_shared: set[int] = set()
    for change in groups(drifts):
        if len({d.subject for d in change.members}) > 1:
            shared[id(change.members[0])] = change.members
            in_shared.update(id(d) for d in change.members)
    entries: dict[tuple[str, str], list[Drift]] = {}
    for drift in drifts:
        if id(drift) in shared:
            entries[("shared", str(id(drift)))] = list(shared[id(drift)])
        elif id(drift) not in in_shared:
            entries.setdefault((drift.category, drift.subject), []).append(drift)
    numbers: dict[str, int] = {}
    out = []
    for (kind, _), items in entries.items():
        category = items[0].category
        number = numbers[category] = numbers.get(category, -1) + 1
        if kind == "shared":
            out.append(SubjectGroup(items[0].subject, category, items[0].key, tuple(items), number,
                                    tuple(d.subject for d in items)))
            continue
        items.sort(key=lambda d: (d.waived is not None, severity_rank(d.severity), d.path))
        keys = {d.key for d in items} - {""}
        out.append(SubjectGroup(items[0].subject, category, keys.pop() if len(keys) == 1 else "", tuple(items),
                                number))
    out.sort(key=SubjectGroup.sort_key)
    return tuple(out)


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
                   sum(counts[s] for s in SEVERITIES if not at_least(s, fail_on)), run_impact_view(run))


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
    spread: dict[str, tuple[tuple[str, int], ...]] = {}
    for os_name in OS_NAMES:
        levels = [getattr(v.impact, os_name).level for v in views if v.impact is not None]
        spread[os_name] = tuple((lv, levels.count(lv)) for lv in reversed(LEVELS) if lv in levels)
    return ReportView(result, views, _summary(result, views), tuple(images), details, spread)


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
        # a waived break is never out of sight: each one is named in the verdict line
        breaks = sorted({f"{d.subject} {d.path}".strip() for v in compared for d in v.run.drifts
                         if d.waived is not None and d.severity == "break"})
        named = f" (waived breaks: {', '.join(breaks)})" if breaks else ""
        parts.append(f"{totals['waived']} waived{named}")
    if errors:
        parts.append(f"{_plural(errors, 'run')} could not be decided")
    if unsupported:
        parts.append(f"{unsupported} unsupported (not compared)")
    if not views:
        parts.append("nothing was compared")
    elif not compared and not errors:
        parts.append("no run was compared")
    shard = result.shard
    if shard is not None:
        planned = len(shard.planned)
        if views:
            parts.append(f"shard {shard.index}/{shard.count}: {len(views)} of the check's {_plural(planned, 'run')}, "
                         "the verdict of the whole check comes from qabi report --merge of every shard")
        else:
            parts.append(f"shard {shard.index}/{shard.count} holds none of the check's {_plural(planned, 'run')}: "
                         f"use at most {_plural(max(planned, 1), 'shard')}")
    return "; ".join(parts)


def verdict_line(result: RunSet) -> str:
    """The one verdict line that ends every text report."""
    return f"verdict: {result.verdict.upper()} — " + _summary(result, run_views(result))


def undecided_reason(result: RunSet) -> str:
    """Why `result` could not be decided (the one stderr line of an exit 2): its first errored run,
    else its first unsupported run (status and reason), else its verdict line."""
    failed = [r for r in result.runs if r.status == "error"] or [r for r in result.runs if r.status != "compared"]
    if not failed:
        return verdict_line(result)
    more = f" (and {len(failed) - 1} more run(s) not compared)" if len(failed) > 1 else ""
    return f"{failed[0].name}: {failed[0].status}: {failed[0].reason}{more}"


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
