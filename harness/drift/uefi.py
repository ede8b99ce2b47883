"""uefi: Secure Boot state, key databases, configuration tables and the UEFI memory map, one entry
each (harness/fingerprint/uefi.py). A key database's entries are compared as a list (an added or
removed certificate or hash is one drift); its sha256 is what PCR 7 measures."""

from __future__ import annotations

from typing import Any

from harness.drift.common import atom_drift, label_of, presence_drift
from harness.drift.diffing import changes
from harness.drift.model import Drift

CATEGORY = "uefi"


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        entry = old.get(key) or new.get(key) or {}
        subject = f"uefi {label_of(entry, key)}"
        if key not in old or key not in new:
            drifts.append(presence_drift(CATEGORY, key, subject, label_of(entry, key), added=key not in old))
            continue
        a = {k: v for k, v in old[key].items() if k != "label"}
        b = {k: v for k, v in new[key].items() if k != "label"}
        drifts += [atom_drift(CATEGORY, key, subject, atom) for atom in changes(a, b)]
    return drifts
