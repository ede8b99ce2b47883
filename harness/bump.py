"""Machine-type bumps: `--machine OLD_TYPE:NEW_TYPE` compares one machine type on the old side
with another on the new side (the same build or not).

QEMU writes the machine type's own name into SMBIOS (type 1 system version, type 3 chassis
version, type 4 processor version: `smbios_set_defaults(..., mc->name)`), so a bump changes those
strings by construction. They are waived by a generated waiver whose reason says so; every other
drift is reported as usual.
"""

from __future__ import annotations

from harness.drift.waivers import Waiver, Waivers
from harness.errors import QabiError

BUMP_SOURCE = "machine type bump"
SEP = ":"


def split_machine(machine: str) -> tuple[str, str]:
    """(old side's machine type, new side's): `OLD:NEW`, or the same type on both sides."""
    if SEP not in machine:
        return machine, machine
    old, _, new = machine.partition(SEP)
    if not old or not new or SEP in new:
        raise QabiError(f"--machine {machine!r}: a bump is OLD_TYPE:NEW_TYPE (e.g. pc-q35-8.0:pc-q35-8.1)")
    return old, new


def is_bump(machine: str) -> bool:
    old, new = split_machine(machine)
    return old != new


def bump_reason(old: str, new: str) -> str:
    return f"machine type bump {old} → {new}: the machine type's own name"


def bump_waivers(machine: str) -> tuple[Waiver, ...]:
    """The generated waivers of a bump: any SMBIOS field whose value is exactly the old machine
    type's name on the old side and the new one's on the new side. None for a plain machine type."""
    old, new = split_machine(machine)
    if old == new:
        return ()
    return (Waiver(category="smbios", subject="*", path="*", old=old, new=new, reason=bump_reason(old, new),
                   source=BUMP_SOURCE),)


def with_bump(waivers: Waivers | None, machine: str) -> Waivers | None:
    """`waivers` plus the bump's generated waivers (after the user's: a user's reason wins)."""
    extra = bump_waivers(machine)
    if not extra:
        return waivers
    entries = (waivers.entries if waivers is not None else ()) + extra
    return Waivers(entries, waivers.source if waivers is not None else None)


def is_generated(waiver: Waiver) -> bool:
    """A waiver made for a bump (never reported as stale: it applies to whatever the bump shows)."""
    return waiver.source == BUMP_SOURCE
