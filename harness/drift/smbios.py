"""SMBIOS: the entry point and structures keyed `TYPE/INSTANCE`.

Strings are compared in `strings` only where no decoded field already shows the change (a
field's value is its string). The entry point's table length, structure count and maximum
structure size follow from the structures: they are reported only when nothing else changed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from harness.drift.common import atom_drift, label_of, presence_drift
from harness.drift.diffing import changes, to_int
from harness.drift.model import Drift, value_text

CATEGORY = "smbios"
ENTRY_POINT = "entry_point"
_DERIVED = {"table_length", "structure_count", "max_structure_size"}


def _type_instance(key: str) -> tuple[int, int]:
    parts = key.split("/")
    t = to_int(parts[0]) if parts else None
    i = to_int(parts[1]) if len(parts) > 1 else 0
    return (t if t is not None else 10_000, i if i is not None else 0)


def _order(key: str) -> tuple[int, int, str]:
    if key == ENTRY_POINT:
        return (-1, 0, key)
    return (*_type_instance(key), key)


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    counts: Counter[int] = Counter()
    for fp in (old, new):
        per_side = Counter(_type_instance(k)[0] for k in fp if k != ENTRY_POINT)
        counts |= per_side
    structures: list[Drift] = []
    entry_point: list[Drift] = []
    for key in sorted(old.keys() | new.keys(), key=_order):
        entry = old.get(key) or new.get(key) or {}
        if key == ENTRY_POINT:
            subject = "smbios entry point"
        else:
            smbios_type, instance = _type_instance(key)
            subject = f"smbios {label_of(entry, f'type {smbios_type}')}"
            if counts[smbios_type] > 1:
                subject += f" #{instance}"
        out = entry_point if key == ENTRY_POINT else structures
        if key not in old or key not in new:
            out.append(presence_drift(CATEGORY, key, subject, label_of(entry, key), added=key not in old))
            continue
        a = {k: v for k, v in old[key].items() if k != "label"}
        b = {k: v for k, v in new[key].items() if k != "label"}
        atoms = changes(a, b)
        shown = {value_text(v) for atom in atoms if atom.parts[:1] == ("fields",)
                 for v in (atom.old, atom.new) if v is not None}
        for atom in atoms:
            if atom.parts[:1] == ("strings",) and any(
                    v is not None and value_text(v) in shown for v in (atom.old, atom.new)):
                continue
            out.append(atom_drift(CATEGORY, key, subject, atom))
    if structures:
        entry_point = [d for d in entry_point if d.path not in _DERIVED]
    return entry_point + structures
