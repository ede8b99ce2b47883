"""registers and fwcfg: entries keyed by PCI function address / fw_cfg file name, compared field
by field; an entry on one side only is one drift."""

from __future__ import annotations

from typing import Any

from harness.drift.common import atom_drift, label_of, presence_drift
from harness.drift.diffing import changes
from harness.drift.model import Drift


def _compare(category: str, subject: str, presence: str, old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        entry = old.get(key) or new.get(key) or {}
        label = label_of(entry, "")
        name = f"{subject} {key}" + (f" {label}" if label and label != key else "")
        if key not in old or key not in new:
            drifts.append(presence_drift(category, key, name, label or key, added=key not in old, path=presence))
            continue
        a = {k: v for k, v in old[key].items() if k != "label"}
        b = {k: v for k, v in new[key].items() if k != "label"}
        atoms = changes(a, b)
        if any(atom.parts[:1] == ("decoded",) for atom in atoms):    # the decoded change says it
            atoms = [atom for atom in atoms if atom.parts[:1] != ("sha256",)]
        drifts += [atom_drift(category, key, name, atom) for atom in atoms]
    return drifts


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    return _compare("registers", "registers", "(function)", old, new)


def compare_fwcfg(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    return _compare("fwcfg", "fw_cfg", "(file)", old, new)
