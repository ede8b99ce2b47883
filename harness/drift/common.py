"""What every category module shares: building a Drift with its severity from the policy."""

from __future__ import annotations

from collections.abc import Callable
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


AcrossTransports = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any], list[str]]]


def read_by_the_hand_off_only(category: str, what: str) -> AcrossTransports:
    """For a category only the firmware transport reads (`what` it holds): over two transports where
    one side is empty, nothing is compared and a note says so; otherwise both sides as they are (an
    empty side over the same transport is a real change: a drift)."""
    def across(old_fp: dict[str, Any], new_fp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        from harness.drift.pci_state import transport_of

        old, new = old_fp[category], new_fp[category]
        sides = transport_of(old_fp), transport_of(new_fp)
        if sides[0] == sides[1] or bool(old) == bool(new):
            return old, new, []
        read, unread = (sides[0], sides[1]) if old else (sides[1], sides[0])
        note = f"{category}: not compared (read over {read}; the guest probe over {unread} does not read {what})"
        return {}, {}, [note]
    return across
