"""CPUID: entries keyed `VCPU/0xLEAF/0xSUBLEAF`.

A register change is reported per changed bit where the decoder names the bit
(`cpuid leaf 0x1 ecx bit 15 (pdcm)`, 0 → 1) and per register otherwise. Decoded `fields`
(family, model, stepping, vendor, APIC ID…) are reported as fields; when a decoded field of a
leaf changed, the unnamed register bits of that leaf are not reported again — the register
values go into the field drift's detail. The same change on every vCPU that has the leaf is
reported once, without a vCPU; per vCPU only where vCPUs differ (fields the entry lists in
`per_vcpu`, such as APIC IDs, differ by design and so show per vCPU when they change).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from harness.drift.common import make_drift
from harness.drift.diffing import canonical, changes, to_int
from harness.drift.model import Change, Drift
from harness.errors import QabiError

CATEGORY = "cpuid"
REGISTERS = ("eax", "ebx", "ecx", "edx")
# Leaves whose subleaf (ECX input) selects what they return: always named with their subleaf.
INDEXED_LEAVES = frozenset({0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F, 0x20,
                            0x23, 0x24, 0x8000001D, 0x80000020, 0x80000026})

LeafId = tuple[int, int]


@dataclass(frozen=True)
class _Atom:
    group: tuple[Any, ...]   # identical group on two vCPUs = the same change
    suffix: str              # appended to the leaf's name in the subject
    path: str
    old: Any
    new: Any
    change: Change = "changed"
    detail: str | None = None


def _identity(key: str, entry: dict[str, Any]) -> tuple[int, int, int]:
    parts = key.split("/")
    values = []
    for i, name in enumerate(("vcpu", "leaf", "subleaf")):
        value = to_int(entry.get(name))
        if value is None and len(parts) == 3:
            value = to_int(parts[i])
        if value is None:
            raise QabiError(f"cpuid entry {key!r}: no {name}")
        values.append(value)
    return values[0], values[1], values[2]


def _register(key: str, entry: dict[str, Any], reg: str) -> int:
    value = to_int(entry.get(reg))
    if value is None:
        raise QabiError(f"cpuid entry {key!r}: register {reg} is {entry.get(reg)!r}, not a hex value")
    return value


def _bit_name(entry: dict[str, Any], reg: str, bit: int) -> str | None:
    names = (entry.get("features") or {}).get(reg) or {}
    name = names.get(str(bit), names.get(bit)) if isinstance(names, dict) else None
    return name if isinstance(name, str) and name else None


def _leaf_name(leaf: int, subleaf: int, indexed: bool) -> str:
    return f"leaf {leaf:#x} subleaf {subleaf:#x}" if indexed else f"leaf {leaf:#x}"


def _summary(entry: dict[str, Any]) -> str:
    return " ".join(f"{reg}={entry.get(reg)}" for reg in REGISTERS)


def _leaf_atoms(okey: str, old: dict[str, Any], nkey: str, new: dict[str, Any]) -> list[_Atom]:
    atoms: list[_Atom] = []
    fields = changes(old.get("fields") or {}, new.get("fields") or {}, prefix=("fields",))
    unnamed: list[tuple[str, int, int, int]] = []
    for reg in REGISTERS:
        ov, nv = _register(okey, old, reg), _register(nkey, new, reg)
        mask = 0
        for bit in range(32):
            if not (ov ^ nv) >> bit & 1:
                continue
            name = _bit_name(old, reg, bit) or _bit_name(new, reg, bit)
            if name is None:
                mask |= 1 << bit
                continue
            o, n = ov >> bit & 1, nv >> bit & 1
            atoms.append(_Atom(("bit", reg, bit, o, n), f" {reg} bit {bit} ({name})", f"{reg}[{bit}]", o, n))
        if mask:
            unnamed.append((reg, mask, ov, nv))
    registers = "; ".join(f"{reg} {old.get(reg)} → {new.get(reg)}" for reg, _, _, _ in unnamed)
    for atom in fields:
        atoms.append(_Atom(("field", atom.path, canonical(atom.old), canonical(atom.new)), "", atom.path,
                           atom.old, atom.new, atom.change,
                           detail=f"registers: {registers}" if registers else None))
    if not fields:
        for reg, mask, ov, nv in unnamed:
            bits = ", ".join(f"{b} ({ov >> b & 1}→{nv >> b & 1})" for b in range(32) if mask >> b & 1)
            atoms.append(_Atom(("reg", reg, mask, ov & mask, nv & mask), "", reg, old.get(reg), new.get(reg),
                               detail=f"changed bits: {bits}"))
    return atoms


def _vcpus(entries: dict[str, Any]) -> set[int]:
    return {_identity(key, entry)[0] for key, entry in entries.items() if isinstance(entry, dict)}


# (leaf, register, bit) whose value depends on the CPU mode CPUID runs in, not on the hardware:
# SYSCALL on Intel models is reported only in 64-bit mode (as real Intel CPUs do; QEMU 10.0 does,
# 7.2 does not). The firmware payload runs CPUID in real mode, the guest probe in 64-bit Linux.
MODE_DEPENDENT = ((0x80000001, "edx", 11),)


def across_transports(old_fp: dict[str, Any], new_fp: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any],
                                                                               list[str]]:
    """The cpuid entries to compare when the two fingerprints were captured over different
    transports, and notes saying what was left out. Transports read different vCPUs (the firmware
    transport reads the boot vCPU at hand-off, the guest probe every vCPU), so a vCPU only one side
    read says nothing about the hardware: CPUID is compared on the vCPUs both sides read. They also
    run CPUID in different CPU modes: a MODE_DEPENDENT bit is taken from the old side. Over the
    same transport everything is compared (a vCPU that appears or disappears is a drift)."""
    from harness.drift.pci_state import transport_of

    old, new = old_fp[CATEGORY], new_fp[CATEGORY]
    sides = transport_of(old_fp), transport_of(new_fp)
    if sides[0] == sides[1]:
        return old, new, []
    notes = []
    have = _vcpus(old), _vcpus(new)
    if have[0] != have[1]:
        both = have[0] & have[1]

        def listed(vcpus: set[int]) -> str:
            return ", ".join(map(str, sorted(vcpus))) or "none"

        old = {k: e for k, e in old.items() if not isinstance(e, dict) or _identity(k, e)[0] in both}
        new = {k: e for k, e in new.items() if not isinstance(e, dict) or _identity(k, e)[0] in both}
        notes.append(f"cpuid: compared on vCPU {listed(both)} only (read over {sides[0]}: vCPU {listed(have[0])}; "
                     f"over {sides[1]}: vCPU {listed(have[1])})")
    by_id = {_identity(k, e): k for k, e in old.items() if isinstance(e, dict)}
    new = dict(new)
    for key, entry in list(new.items()):
        ident = _identity(key, entry) if isinstance(entry, dict) else None
        for leaf, reg, bit in MODE_DEPENDENT:
            if ident is None or ident[1:] != (leaf, 0) or ident not in by_id:
                continue
            was, now = _register(key, old[by_id[ident]], reg), _register(key, entry, reg)
            if (was ^ now) >> bit & 1:
                new[key] = entry = {**entry, reg: f"{now ^ (1 << bit):#010x}"}
                note = (f"cpuid: leaf {leaf:#x} {reg} bit {bit} not compared: it depends on the CPU mode "
                        f"CPUID ran in ({sides[0]} and {sides[1]} read it in different modes)")
                notes += [note] if note not in notes else []
    return old, new, notes


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    sides: list[dict[LeafId, dict[int, tuple[str, dict[str, Any]]]]] = []
    vcpus: list[set[int]] = []
    for fp in (old, new):
        index: dict[LeafId, dict[int, tuple[str, dict[str, Any]]]] = defaultdict(dict)
        seen: set[int] = set()
        for key, entry in fp.items():
            vcpu, leaf, subleaf = _identity(key, entry)
            index[(leaf, subleaf)][vcpu] = (key, entry)
            seen.add(vcpu)
        sides.append(index)
        vcpus.append(seen)
    o_index, n_index = sides
    drifts: list[Drift] = []
    for vcpu in sorted(vcpus[0] ^ vcpus[1]):
        added = vcpu in vcpus[1]
        count = sum(1 for leaves in (n_index if added else o_index).values() if vcpu in leaves)
        drifts.append(make_drift(CATEGORY, "vcpu", f"cpuid vCPU {vcpu}", "", None if added else f"{count} leaves",
                                 f"{count} leaves" if added else None, "added" if added else "removed",
                                 key=f"vcpu {vcpu}"))
    common = vcpus[0] & vcpus[1]
    leaves = sorted(o_index.keys() | n_index.keys())
    indexed = INDEXED_LEAVES | {leaf for leaf, subleaf in leaves if subleaf}
    for leaf, subleaf in leaves:
        entry_key = f"{leaf:#010x}/{subleaf:#x}"
        name = _leaf_name(leaf, subleaf, leaf in indexed)
        here = sorted(v for v in common if v in o_index[(leaf, subleaf)] or v in n_index[(leaf, subleaf)])
        groups: dict[tuple[Any, ...], list[tuple[int, _Atom]]] = defaultdict(list)
        for vcpu in here:
            o = o_index[(leaf, subleaf)].get(vcpu)
            n = n_index[(leaf, subleaf)].get(vcpu)
            if o is None or n is None:
                present = n if o is None else o
                assert present is not None
                change: Change = "added" if o is None else "removed"
                summary = _summary(present[1])
                atom = _Atom(("presence", change), "", "", None if o is None else summary,
                             summary if o is None else None, change)
                groups[atom.group].append((vcpu, atom))
                continue
            for atom in _leaf_atoms(o[0], o[1], n[0], n[1]):
                groups[atom.group].append((vcpu, atom))
        for hits in groups.values():
            if len(hits) == len(here):
                _, atom = hits[0]
                detail = atom.detail
                if len(hits) > 1:
                    detail = "\n".join(filter(None, [f"same change on all {len(hits)} vCPUs", detail]))
                drifts.append(make_drift(CATEGORY, entry_key, f"cpuid {name}{atom.suffix}", atom.path,
                                         atom.old, atom.new, atom.change, detail=detail))
            else:
                for vcpu, atom in hits:
                    drifts.append(make_drift(CATEGORY, entry_key, f"cpuid vCPU {vcpu} {name}{atom.suffix}",
                                             atom.path, atom.old, atom.new, atom.change, detail=atom.detail,
                                             key=f"{vcpu}/{entry_key}"))
    return drifts
