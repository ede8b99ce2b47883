"""uefi: Secure Boot state, key databases, configuration tables and the UEFI memory map, one entry
each (harness/fingerprint/uefi.py). A key database's entries are compared as a list (an added or
removed certificate or hash is one drift); its sha256 is what PCR 7 measures."""

from __future__ import annotations

from typing import Any

from harness.drift.common import atom_drift, label_of, presence_drift
from harness.drift.diffing import changes
from harness.drift.model import Drift

CATEGORY = "uefi"


def across_transports(old_fp: dict[str, Any], new_fp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                               list[str]]:
    """The uefi entries to compare: over two transports where only the firmware transport's EFI
    probe read them (the serial and SSH guest probe reads no UEFI variables or memory map: its side
    is empty), nothing, with a note saying so; otherwise both sides as they are (an empty side over
    the same transport is a firmware change: a drift)."""
    from harness.drift.pci_state import transport_of

    old, new = old_fp[CATEGORY], new_fp[CATEGORY]
    sides = transport_of(old_fp), transport_of(new_fp)
    if sides[0] == sides[1] or (bool(old) == bool(new)):
        return old, new, []
    read, unread = (sides[0], sides[1]) if old else (sides[1], sides[0])
    note = (f"uefi: not compared (read over {read} by the EFI probe; the guest probe over {unread} does not "
            "read the UEFI variables, configuration table or memory map)")
    return {}, {}, [note]


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
