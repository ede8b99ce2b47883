"""The drift records: one `Drift` per thing that changed, and the `Comparison` that holds them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from typing import Any, Literal

from harness.drift.glob import glob_match

Severity = Literal["break", "warn", "info"]
Change = Literal["added", "removed", "changed"]
Verdict = Literal["unchanged", "drift"]
Level = Literal["none", "driver", "device", "activation", "recovery"]   # a guest's reaction (harness/drift/impact.py)

SEVERITIES: tuple[Severity, ...] = ("break", "warn", "info")
_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}


def severity_rank(severity: str) -> int:
    """0 for the most severe ("break"); raises ValueError for an unknown severity."""
    try:
        return _RANK[severity]
    except KeyError:
        raise ValueError(f"unknown severity {severity!r} (expected one of {', '.join(SEVERITIES)})") from None


def at_least(severity: str, threshold: str) -> bool:
    """Whether `severity` is as severe as `threshold` or more."""
    return severity_rank(severity) <= severity_rank(threshold)


def value_text(value: Any) -> str:
    """A drift value as waivers compare it: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Impact:
    """What each guest does about one drift. `component` names the Windows activation component
    (or "" when the Windows level is not activation); `rule` is the table row's name."""

    windows: Level
    linux: Level
    why: str
    component: str = ""
    rule: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"windows": self.windows, "linux": self.linux, "why": self.why}


@dataclass(frozen=True)
class Waiver:
    category: str
    subject: str
    reason: str
    path: str = "*"
    old: str | None = None
    new: str | None = None
    index: int = 0            # 1-based position in the file
    line: int | None = None   # line where its [[waiver]] starts
    source: str | None = None

    def applies_to(self, category: str) -> bool:
        return glob_match(self.category, category)

    def matches(self, drift: Drift) -> bool:
        return (glob_match(self.category, drift.category)
                and glob_match(self.subject, drift.subject)
                and glob_match(self.path, drift.path)
                and (self.old is None or self.old == value_text(drift.old))
                and (self.new is None or self.new == value_text(drift.new)))

    @property
    def where(self) -> str:
        place = self.source or "waivers"
        return f"{place}:{self.line}" if self.line else f"{place} waiver #{self.index}"

    def describe(self) -> str:
        parts = [f"category={self.category}", f"subject={self.subject}", f"path={self.path}"]
        if self.old is not None:
            parts.append(f"old={self.old}")
        if self.new is not None:
            parts.append(f"new={self.new}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "subject": self.subject, "path": self.path, "old": self.old,
                "new": self.new, "reason": self.reason, "index": self.index, "line": self.line,
                "source": self.source}


@dataclass(frozen=True)
class Drift:
    """One guest-visible difference between two fingerprints.

    `subject` is what a person calls the thing (`pci 0000:00:05.0 [1af4:1005] Virtio RNG`),
    `path` the field inside it (`capabilities[MSI-X].fields.table_size`; `(device)` or "" when
    the whole thing was added or removed), `old`/`new` JSON values (None when absent).
    `key` is the entry's identity key in the fingerprint (`0000:00:05.0`, `DSDT`, `1/0`,
    `0x00000001/0x0`) so a report can link to it; `detail` is optional longer text (a unified
    ASL diff, the changed config bytes). `impact` is what Windows and Linux do about it and
    `group` the id shared by drifts that are the same change on several subjects (both set by
    `compare()`: harness/drift/impact.py).
    """

    category: str
    subject: str
    path: str
    old: Any
    new: Any
    severity: Severity
    waived: str | None = None
    detail: str | None = None
    change: Change = "changed"
    key: str = ""
    impact: Impact | None = None
    group: str | None = None

    def sort_key(self) -> tuple[int, str, str]:
        return (severity_rank(self.severity), self.subject, self.path)

    def waive(self, reason: str) -> Drift:
        return replace(self, waived=reason)

    @property
    def summary(self) -> str:
        """One line for people: `added: MSI-X capability at 0x98`, `0 → 1`."""
        if self.change == "added":
            return f"added: {_short(self.new)}" if self.new is not None else "added"
        if self.change == "removed":
            return f"removed: {_short(self.old)}" if self.old is not None else "removed"
        if _multiline(self.old) or _multiline(self.new):
            return _text_change(str(self.old or ""), str(self.new or ""))
        return f"{_short(self.old)} → {_short(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        return {"category": self.category, "subject": self.subject, "path": self.path,
                "old": self.old, "new": self.new, "severity": self.severity, "waived": self.waived,
                "change": self.change, "key": self.key, "detail": self.detail,
                "impact": self.impact.as_dict() if self.impact is not None else None, "group": self.group}


def _multiline(value: Any) -> bool:
    return isinstance(value, str) and "\n" in value


def _text_change(old: str, new: str) -> str:
    added = removed = 0
    matcher = SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed += i2 - i1
            added += j2 - j1
    return f"text changed: +{added} −{removed} lines"


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, str):
        text = value if "\n" not in value else f"({value.count(chr(10)) + 1} lines)"
    else:
        text = value_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Comparison:
    """The drifts between two fingerprints (most severe first), with waivers applied.

    `categories` are the categories that were compared; `stale_waivers` the waivers, among those
    that apply to these categories, that matched no drift.
    """

    drifts: tuple[Drift, ...]
    stale_waivers: tuple[Waiver, ...] = ()
    categories: tuple[str, ...] = ()   # what was compared (the engine names them)
    waivers_source: str | None = field(default=None)
    notes: tuple[str, ...] = ()     # "category: what was (not) compared", e.g. across transports

    def unwaived(self, fail_on: str = "info") -> tuple[Drift, ...]:
        """Drifts not waived, at `fail_on` severity or above."""
        return tuple(d for d in self.drifts if d.waived is None and at_least(d.severity, fail_on))

    def verdict(self, fail_on: str = "warn") -> Verdict:
        """"unchanged" when no unwaived drift is at `fail_on` or above, else "drift"."""
        return "drift" if self.unwaived(fail_on) else "unchanged"

    def only(self, category: str) -> Comparison:
        """The same comparison restricted to one category (one pytest item per category)."""
        if category not in self.categories:
            raise ValueError(f"category {category!r} was not compared (compared: {', '.join(self.categories)})")
        return Comparison(
            drifts=tuple(d for d in self.drifts if d.category == category),
            stale_waivers=tuple(w for w in self.stale_waivers if w.applies_to(category)),
            categories=(category,),
            waivers_source=self.waivers_source,
            notes=tuple(n for n in self.notes if n.startswith(f"{category}:")),
        )

    def counts(self) -> dict[str, int]:
        """Unwaived drifts per severity, plus "waived"."""
        out: dict[str, int] = {s: 0 for s in SEVERITIES}
        out["waived"] = 0
        for d in self.drifts:
            out["waived" if d.waived is not None else d.severity] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"categories": list(self.categories), "drifts": [d.as_dict() for d in self.drifts],
                "stale_waivers": [w.as_dict() for w in self.stale_waivers]}
