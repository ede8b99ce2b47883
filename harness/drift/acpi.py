"""ACPI: tables keyed by signature (+ instance); AML tables also carry `devices` and `asl`.

A table present on one side only is one drift. Header, decoded fields and pointers are compared
field by field (`header.length` only when nothing else in the table changed: it follows from
the rest). Namespace devices: one drift per device added or removed (its added/removed children
folded into it), `_HID/_CID/_UID/_ADR` changes as their own drifts, and one `asl` drift per
device whose *own* ASL changed (children and identity Names excluded, `Scope (DEVICE)` blocks
elsewhere in the table included: see asl.py), with the unified diff in `detail`. ASL outside
every indexed device that changed is one `asl` drift on the table.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from harness.drift.asl import device_own_text, split_table, unified
from harness.drift.common import atom_drift, make_drift, presence_drift
from harness.drift.diffing import changes, plain
from harness.drift.model import Drift
from harness.fingerprint.acpi_names import norm_path

CATEGORY = "acpi"
IDENTITY = ("hid", "cid", "uid", "adr")
_AML = {"devices", "asl"}
_DERIVED_IF_OTHERS = {"header.length"}


def _device_summary(device: dict[str, Any]) -> str:
    for key, name in (("hid", "_HID"), ("adr", "_ADR"), ("uid", "_UID")):
        if device.get(key) is not None:
            return f"{name} {plain(device[key])}"
    return "device"


def _enumerated_by_type(device: Mapping[str, Any]) -> bool:
    """`Processor` and `ThermalZone` objects: the OS enumerates them by object type (Linux LNXCPU,
    LNXTHERM; Windows processor devices), without a _HID."""
    asl = device.get("asl")
    return isinstance(asl, str) and asl.lstrip().startswith(("Processor", "ThermalZone"))


def identity_facet(devices: Mapping[str, Any], path: str, subtree: bool = False) -> str:
    """How a guest identifies the namespace device at `path` (and, with `subtree`, its
    descendants, as folded into one added/removed drift): "hid" when any of them has a _HID or
    _CID or is a Processor/ThermalZone object (a device the OS enumerates), "adr" when it has
    only _ADR (the ACPI companion of a bus device, e.g. a PCI function), "bare" when it has
    neither; "" when `path` is not in `devices`. The policy and the impact table both key on it."""
    if path not in devices:
        return ""
    prefix = path + "."
    nodes = [devices[p] for p in devices if p == path or (subtree and p.startswith(prefix))]
    nodes = [n for n in nodes if isinstance(n, dict)]
    if any(n.get("hid") is not None or n.get("cid") is not None or _enumerated_by_type(n) for n in nodes):
        return "hid"
    own = devices[path] if isinstance(devices[path], dict) else {}
    return "adr" if own.get("adr") is not None else "bare"


def _fold(paths: set[str]) -> dict[str, list[str]]:
    """Top-most paths, each with its descendants that are in the same set."""
    by_norm = {norm_path(p): p for p in paths}
    out: dict[str, list[str]] = {}
    for p in sorted(paths, key=lambda p: norm_path(p).count(".")):
        n = norm_path(p)
        ancestor = next((by_norm[a] for a in _ancestors(n) if a in by_norm and by_norm[a] in out), None)
        if ancestor is None:
            out[p] = []
        else:
            out[ancestor].append(p)
    return out


def _ancestors(path: str) -> list[str]:
    parts = path.lstrip("\\").split(".")
    return ["\\" + ".".join(parts[:i]) for i in range(1, len(parts))]


def _compare_devices(table: str, old: dict[str, Any], new: dict[str, Any],
                     old_ext: dict[str, str], new_ext: dict[str, str]) -> list[Drift]:
    drifts: list[Drift] = []
    for side_only, added in ((set(new) - set(old), True), (set(old) - set(new), False)):
        for path, children in _fold(side_only).items():
            device = (new if added else old)[path]
            detail = ("with child devices: " + ", ".join(sorted(children))) if children else None
            drifts.append(presence_drift(CATEGORY, table, f"acpi {table} {path}", _device_summary(device), added,
                                         path="(device)", key=f"{table} {path}", detail=detail,
                                         facet=identity_facet(new if added else old, path, subtree=True)))
    for path in sorted(old.keys() & new.keys()):
        o, n = old[path] or {}, new[path] or {}
        subject = f"acpi {table} {path}"
        where = f"{table} {path}"
        facet = "hid" if "hid" in (identity_facet(old, path), identity_facet(new, path)) else identity_facet(new, path)
        for name in IDENTITY:
            if plain(o.get(name)) != plain(n.get(name)):
                drifts.append(make_drift(CATEGORY, table, subject, name, plain(o.get(name)), plain(n.get(name)),
                                         key=where, facet=facet))
        has_asl = isinstance(o.get("asl"), str) and isinstance(n.get("asl"), str)
        if _same_text(path, o, n, old, new, old_ext, new_ext):
            a = b = ""
        else:
            a = _own(o, path, old.keys(), old_ext)
            b = _own(n, path, new.keys(), new_ext)
        if a != b:
            drifts.append(make_drift(CATEGORY, table, subject, "asl", a, b, key=where,
                                     detail=unified(a, b, f"{table} {path}")))
        if has_asl:
            # The ASL is the whole truth about the device: sun, names and methods are in it (and
            # `names` may list child devices, which are compared on their own).
            continue
        rest_old = {k: v for k, v in o.items() if k not in IDENTITY and k != "asl"}
        rest_new = {k: v for k, v in n.items() if k not in IDENTITY and k != "asl"}
        for atom in changes(rest_old, rest_new):
            drifts.append(atom_drift(CATEGORY, table, subject, atom, key=where))
    return drifts


def _same_text(path: str, o: dict[str, Any], n: dict[str, Any], old: dict[str, Any], new: dict[str, Any],
               old_ext: dict[str, str], new_ext: dict[str, str]) -> bool:
    """Cheap check that the own ASL cannot differ: same block, same indexed descendants, same
    Scope extensions."""
    if o.get("asl") != n.get("asl"):
        return False
    key = norm_path(path)
    if old_ext.get(key) != new_ext.get(key):
        return False
    prefix = path + "."
    return {p for p in old if p.startswith(prefix)} == {p for p in new if p.startswith(prefix)}


def _own(device: dict[str, Any], path: str, known: Any, extensions: dict[str, str]) -> str:
    """The device's own ASL: its block (children and identity Names left out) and the Scope
    blocks elsewhere in the table that add to it."""
    parts = []
    if isinstance(device.get("asl"), str):
        parts.append(textwrap.dedent(device_own_text(device["asl"], path, known)))
    extra = extensions.get(norm_path(path))
    if extra:
        parts.append(extra)
    return "\n".join(parts)


def _compare_table(key: str, old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    subject = f"acpi {key}"
    a = {k: v for k, v in old.items() if k not in _AML and k != "label"}
    b = {k: v for k, v in new.items() if k not in _AML and k != "label"}
    drifts = [atom_drift(CATEGORY, key, subject, atom) for atom in changes(a, b)]
    old_devices = old.get("devices") or {}
    new_devices = new.get("devices") or {}
    old_ext: dict[str, str] = {}
    new_ext: dict[str, str] = {}
    if old.get("asl") == new.get("asl") and old_devices.keys() == new_devices.keys():
        ta = tb = ""             # same text, same indexed devices: same split
    else:
        ta, old_ext = split_table(old.get("asl") or "", old_devices.keys())
        tb, new_ext = split_table(new.get("asl") or "", new_devices.keys())
    drifts += _compare_devices(key, old_devices, new_devices, old_ext, new_ext)
    if ta != tb:
        drifts.append(make_drift(CATEGORY, key, subject, "asl", ta, tb,
                                 detail=unified(ta, tb, f"{key} (outside its devices)")))
    if any(d.path not in _DERIVED_IF_OTHERS for d in drifts):
        drifts = [d for d in drifts if d.path not in _DERIVED_IF_OTHERS or d.subject != subject]
    return drifts


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old or key not in new:
            entry = old.get(key) or new[key]
            label = entry.get("label") if isinstance(entry.get("label"), str) else key
            drifts.append(presence_drift(CATEGORY, key, f"acpi {key}", label, added=key not in old))
            continue
        drifts += _compare_table(key, old[key], new[key])
    return drifts
