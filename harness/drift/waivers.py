"""Waivers: accepted drifts, from a TOML file (default `fingerprints/waivers.toml`).

    [[waiver]]
    category = "pci"                                  # glob
    subject  = 'pci 0000:00:05.0 *'                   # glob; use '…' strings for ACPI's backslashes
    path     = "capabilities[MSI-X]"                  # glob, default "*"
    old      = "0x0"                                  # optional: exact value, compared as strings
    new      = "0x1"                                  # optional
    reason   = "virtio-rng gained MSI-X in 7.2.0; accepted for our fleet"   # required
    scope    = "all"                                  # required only by a catch-all waiver (globs that
                                                      # match anything, no old/new): it waives everything

Glob syntax: `*` any run of characters, `?` one character, `{a,b}` alternatives, everything
else (square brackets included) literal; unbalanced braces are refused. Waived drifts stay in the comparison with
`waived=reason`; waivers that match nothing are reported as stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.cache import TOML_LIMIT, parse_toml, read_text
from harness.categories import names
from harness.drift.glob import PATH_PROBES, SUBJECT_PROBES, glob_match, glob_problem, matches_everything
from harness.drift.model import Drift, Waiver, value_text
from harness.drift.policy import policy_rows
from harness.errors import QabiError

DEFAULT_WAIVERS = Path("fingerprints") / "waivers.toml"

_KEYS = {"category", "subject", "path", "old", "new", "reason", "scope"}
_REQUIRED = ("category", "subject", "reason")
_TABLE_HEADER = re.compile(r"^\s*\[\[\s*waiver\s*\]\]")


@dataclass(frozen=True)
class Waivers:
    entries: tuple[Waiver, ...] = ()
    source: str | None = field(default=None)

    def __len__(self) -> int:
        return len(self.entries)

    def apply(self, drifts: Iterable[Drift], categories: Iterable[str] | None = None,
              ) -> tuple[list[Drift], list[Waiver]]:
        """Drifts with `waived` set by the first matching waiver, and the waivers (that apply
        to `categories`) that matched nothing."""
        used: set[int] = set()
        out: list[Drift] = []
        for drift in drifts:
            for i, waiver in enumerate(self.entries):
                if waiver.matches(drift):
                    used.add(i)
                    drift = drift.waive(waiver.reason)
                    break
            out.append(drift)
        cats = names() if categories is None else tuple(categories)
        stale = [w for i, w in enumerate(self.entries)
                 if i not in used and any(w.applies_to(c) for c in cats)]
        return out, stale


def _probes() -> dict[str, tuple[str, ...]]:
    """What drifts look like, per waiver key, for the catch-all test: every registered category, and
    subjects and paths of every category (the fixed probes, and each policy row's example entry and
    path: a category registered later brings its rows, so its drifts are probed too)."""
    rows = [rule for rule in policy_rows() if rule.category != "*"]
    return {"category": names(),
            "subject": SUBJECT_PROBES + tuple(f"{rule.category} {rule.example[0]}".strip() for rule in rows),
            "path": PATH_PROBES + tuple(rule.example[1] for rule in rows if rule.example[1])}


def _waiver_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if _TABLE_HEADER.match(line)]


def parse_waivers(text: str, source: str = "<waivers>") -> Waivers:
    """Waivers from TOML text; QabiError naming `source` and the line on any problem."""
    data = parse_toml(text, source, "waivers file")
    unknown_top = sorted(set(data) - {"waiver"})
    if unknown_top:
        raise QabiError(f"{source}: unknown top-level key {unknown_top[0]!r} (expected [[waiver]] entries)")
    entries = data.get("waiver", [])
    if not isinstance(entries, list):
        raise QabiError(f"{source}: `waiver` must be an array of tables ([[waiver]])")
    starts = _waiver_lines(text)
    waivers: list[Waiver] = []
    for i, entry in enumerate(entries, 1):
        line = starts[i - 1] if len(starts) == len(entries) else None
        where = f"{source}:{line}: waiver #{i}" if line else f"{source}: waiver #{i}"
        if not isinstance(entry, dict):
            raise QabiError(f"{where}: must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise QabiError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})")
        for key in _REQUIRED:
            if key not in entry:
                raise QabiError(f"{where}: missing required key {key!r}")
        for key in ("category", "subject", "path", "reason"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                raise QabiError(f"{where}: {key!r} must be a non-empty string")
        for key in ("category", "subject", "path"):
            problem = glob_problem(entry.get(key, "*"))
            if problem:
                raise QabiError(f"{where}: {key} glob {entry[key][:80]!r} has {problem}")
        scope = entry.get("scope")
        if scope is not None and scope != "all":
            raise QabiError(f"{where}: scope must be \"all\" (or left out), not {scope!r}")
        probes = _probes()
        catch_all = (all(matches_everything(entry.get(k, "*"), probes[k]) for k in probes)
                     and entry.get("old") is None and entry.get("new") is None)
        if catch_all and scope != "all":
            raise QabiError(f"{where}: this waiver matches every drift (its category, subject and path globs match "
                            "anything, no old/new): write scope = \"all\" if that is really meant")
        if not any(glob_match(entry["category"], c) for c in names()):
            raise QabiError(f"{where}: category {entry['category']!r} matches none of {', '.join(names())}")
        values: dict[str, str | None] = {}
        for key in ("old", "new"):
            value = entry.get(key)
            if isinstance(value, dict | list):
                raise QabiError(f"{where}: {key!r} must be a string, number or boolean")
            values[key] = None if value is None else value_text(value)
        waivers.append(Waiver(category=entry["category"], subject=entry["subject"], reason=entry["reason"],
                              path=entry.get("path", "*"), old=values["old"], new=values["new"],
                              index=i, line=line, source=source))
    return Waivers(tuple(waivers), source)


def load_waivers(path: Path | str) -> Waivers:
    """Waivers from a TOML file; a missing or malformed file is a QabiError naming file and line."""
    p = Path(path)
    return parse_waivers(read_text(p, "a waivers file", TOML_LIMIT), str(p))
