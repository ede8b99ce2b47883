"""e820: the memory map, one entry (`map`) with ordered `ranges`.

Ranges are aligned with difflib: an inserted range is one drift, not a shift of every later
index; a range whose end or type changed is a field drift (`ranges[3].end`).
"""

from __future__ import annotations

from typing import Any

from harness.drift.common import atom_drift, presence_drift
from harness.drift.diffing import changes
from harness.drift.model import Drift

CATEGORY = "e820"


def _range_text(value: Any) -> Any:
    if isinstance(value, dict) and {"start", "end"} <= value.keys():
        return f"{value['start']}-{value['end']} {value.get('type', '')}".rstrip()
    return value


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        subject = "e820" if key == "map" else f"e820 {key}"
        if key not in old or key not in new:
            drifts.append(presence_drift(CATEGORY, key, subject, key, added=key not in old))
            continue
        a = {k: v for k, v in old[key].items() if k != "label"}
        b = {k: v for k, v in new[key].items() if k != "label"}
        for atom in changes(a, b):
            if atom.change != "changed" and len(atom.parts) == 2 and atom.parts[0] == "ranges":
                value = _range_text(atom.new if atom.change == "added" else atom.old)
                drifts.append(presence_drift(CATEGORY, key, subject, value, atom.change == "added",
                                             path=atom.path))
            else:
                drifts.append(atom_drift(CATEGORY, key, subject, atom))
    return drifts
