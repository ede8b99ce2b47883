"""What every category module shares: building a Drift with its severity from the policy."""

from __future__ import annotations

from typing import Any

from harness.drift.diffing import Atom
from harness.drift.model import Change, Drift
from harness.drift.policy import severity_for


def make_drift(category: str, entry: str, subject: str, path: str, old: Any, new: Any,
               change: Change = "changed", detail: str | None = None, key: str | None = None,
               facet: str = "") -> Drift:
    """A Drift whose severity the policy decides from (category, entry, path, facet)."""
    return Drift(category=category, subject=subject, path=path, old=old, new=new,
                 severity=severity_for(category, entry, path, facet), detail=detail, change=change,
                 key=entry if key is None else key)


def atom_drift(category: str, entry: str, subject: str, atom: Atom, key: str | None = None,
               detail: str | None = None) -> Drift:
    return make_drift(category, entry, subject, atom.path, atom.old, atom.new, atom.change,
                      detail=detail, key=key)


def presence_drift(category: str, entry: str, subject: str, summary: Any, added: bool,
                   path: str = "", key: str | None = None, detail: str | None = None,
                   facet: str = "") -> Drift:
    """One drift for a whole entry (device, table, structure, leaf) present on one side only."""
    return make_drift(category, entry, subject, path, None if added else summary, summary if added else None,
                      "added" if added else "removed", detail=detail, key=key, facet=facet)


def label_of(entry: dict[str, Any], fallback: str) -> str:
    label = entry.get("label")
    return label if isinstance(label, str) and label else fallback
