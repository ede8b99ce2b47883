"""Config-space bits that the guest's drivers (not the device model) program at run time.

The fingerprint's decoded fields already leave such state out. This table serves the last net
of the PCI comparison, the raw config bytes no decoded field explains: there, a bit a driver
writes must not count as drift when one side was read after an OS ran (serial, ssh) and the other
at the firmware hand-off, or a bring-your-own image's drivers ran. Between two hand-off captures
nothing is filtered (`comparing`).

The table is narrow on purpose: a filtered bit is a bit where a QEMU change goes unseen. Rows are
of two kinds, and tests/test_pci_state.py holds both to account on real captures (debian:bookworm,
every profile, pc-i440fx-7.2 and pc-q35-7.2, hand-off value against the value after the reference
guest booted):
- written by the reference guest: each row is shown to change in at least one of those runs;
- BYO_ONLY: written by drivers the reference guest does not load but a bring-your-own Debian
  image does (named per row); the test shows the reference guest leaves them alone.
Anything not listed still counts (PCI Express control registers, AER, PM, virtio's PCI
configuration window: the reference kernel's PCI core and drivers leave them at their hand-off
values, so they are compared).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from harness.drift.diffing import to_int

# standard capability id -> [(offset in the capability, mask)]
_STD: dict[int, list[tuple[int, int]]] = {
    # MSI: enable and multiple-message enable; address, data, mask and pending bits (_MSI_DATA)
    0x05: [(2, 0x71)],
    # MSI-X: enable, function mask (virtio-pci and e1000e enable MSI-X)
    0x11: [(3, 0xc0)],
}
_MSI_DATA = range(4, 0x18)  # message address (64-bit), data, mask and pending bits

# extended capability id -> [(offset in the capability, mask)]: none is written (see the docstring)
_EXT: dict[int, list[tuple[int, int]]] = {}

# (vendor, device) -> [(config offset, mask)]: device-specific registers outside capabilities
_DEVICE: dict[tuple[int, int], list[tuple[int, int]]] = {
    # PIIX3 ISA bridge: PIRQ route control, written through the DSDT's _SRS of LNKA..LNKD; DLC
    # bit 1 (passive release), set by Linux's quirk_passive_release
    (0x8086, 0x7000): [*((o, 0xff) for o in range(0x60, 0x64)), (0x82, 0x02)],
    # ICH9 LPC: PIRQA-D and PIRQE-H routing (the DSDT's _SRS of LNKA..LNKH)
    (0x8086, 0x2918): [(o, 0xff) for o in (*range(0x60, 0x64), *range(0x68, 0x6c))],
    # PIIX3/PIIX4 IDE: timing and UDMA control (ata_piix programs the transfer modes)
    (0x8086, 0x7010): [(o, 0xff) for o in range(0x40, 0x58)],
    (0x8086, 0x7111): [(o, 0xff) for o in range(0x40, 0x58)],
    # ICH9 AHCI: port mapping and port control/status (ahci enables the implemented ports)
    (0x8086, 0x2922): [(o, 0xff) for o in range(0x90, 0x94)],
    # PIIX3 UHCI: legacy support register (uhci_hcd turns off BIOS legacy emulation, RW1C bits)
    (0x8086, 0x7020): [(0xc0, 0xff), (0xc1, 0xff)],
    # HD Audio (ICH6 on i440fx, ICH9 on q35): TCSEL and DEVC (snd_hda_intel clears them)
    (0x8086, 0x2668): [(0x44, 0xff), (0x78, 0xff), (0x79, 0xff)],
    (0x8086, 0x293e): [(0x44, 0xff), (0x78, 0xff), (0x79, 0xff)],
    # ICH9 SMBus: host configuration (i2c_i801 enables the host interface)
    (0x8086, 0x2930): [(0x40, 0xff)],
    # PIIX4 power management: SMBus host configuration (i2c_piix4)
    (0x8086, 0x7113): [(0xd2, 0xff)],
}

# Rows (by rule prefix, see filter_rows) that the reference guest does not write, kept because a
# bring-your-own image's drivers do: the reference initramfs loads only the NIC drivers, a Debian
# image (guests/byo/build-debian-image, tests/test_ssh.py) binds every function. Rule -> the driver.
BYO_ONLY: dict[str, str] = {
    "cap 0x05": "MSI: ahci (ICH9 AHCI) and snd_hda_intel enable MSI and program its address and data",
    "dev 8086:7010": "PIIX3 IDE timing: ata_piix programs the transfer modes",
    "dev 8086:7111": "PIIX4 IDE timing: ata_piix programs the transfer modes",
    "dev 8086:2922": "ICH9 AHCI port control/status: ahci enables the implemented ports",
    "dev 8086:7020": "PIIX3 UHCI legacy support: uhci_hcd turns off BIOS legacy emulation",
    "dev 8086:2668": "ICH6 HD Audio TCSEL/DEVC: snd_hda_intel clears them",
    "dev 8086:293e": "ICH9 HD Audio TCSEL/DEVC: snd_hda_intel clears them",
    "dev 8086:2930": "ICH9 SMBus host configuration: i2c_i801 enables the host interface",
    "dev 8086:7113": "PIIX4 SMBus host configuration: i2c_piix4",
}


def byo_only(rule: str) -> str | None:
    """The driver that justifies `rule` when the reference guest does not write it, else None."""
    return next((why for prefix, why in BYO_ONLY.items() if rule.startswith(prefix + "+")), None)


def table_rules() -> set[str]:
    """Every rule prefix the table has (`cap 0x11`, `ext 0x0001`, `dev 8086:7000`, `virtio pci_cfg`)."""
    return ({f"cap {c:#04x}" for c in _STD} | {f"ext {c:#06x}" for c in _EXT}
            | {f"dev {v:04x}:{d:04x}" for v, d in _DEVICE})


# Transports whose PCI config space is read before any OS driver ran: both sides read there are
# compared bit for bit (no driver-state filter).
HANDOFF_TRANSPORTS = frozenset({"firmware"})
_SIDES: ContextVar[tuple[str, str]] = ContextVar("qabi_pci_sides", default=("serial", "serial"))


def transport_of(fingerprint: dict[str, Any]) -> str:
    """The transport a fingerprint was captured with (fingerprints older than the field: serial)."""
    source = fingerprint.get("source") if isinstance(fingerprint, dict) else None
    value = source.get("transport") if isinstance(source, dict) else None
    return value if isinstance(value, str) and value else "serial"


@contextmanager
def comparing(old: dict[str, Any], new: dict[str, Any]) -> Iterator[None]:
    """Within the block, runtime_mask knows which transports the compared fingerprints came from."""
    token = _SIDES.set((transport_of(old), transport_of(new)))
    try:
        yield
    finally:
        _SIDES.reset(token)


def driver_state_filtered() -> bool:
    """False when both compared sides were read at the firmware hand-off (nothing to filter)."""
    return not all(side in HANDOFF_TRANSPORTS for side in _SIDES.get())


def filter_rows(entry: dict[str, Any]) -> Iterator[tuple[str, int, int]]:
    """(rule, config offset, mask) for every driver-programmed byte of one function's entry; the
    rule names the table row it comes from (`cap 0x10+0x08`, `ext 0x0001+0x04`, `dev 8086:7000+0x60`)."""
    vendor, device = to_int(entry.get("vendor")) or 0, to_int(entry.get("device")) or 0
    for offset, bits in _DEVICE.get((vendor, device), []):
        yield f"dev {vendor:04x}:{device:04x}+{offset:#04x}", offset, bits
    caps = [c for c in entry.get("capabilities") or [] if isinstance(c, dict)]
    starts = sorted(o for o in (to_int(c.get("offset")) for c in caps) if o is not None)
    for cap in caps:
        cap_id, base = to_int(cap.get("id")), to_int(cap.get("offset"))
        if cap_id is None or base is None:
            continue
        for rel, bits in _STD.get(cap_id, []):
            yield f"cap {cap_id:#04x}+{rel:#04x}", base + rel, bits
        if cap_id == 0x05:
            end = min([s for s in starts if s > base] + [base + _MSI_DATA.stop, 0x100])
            for rel in _MSI_DATA:
                if base + rel < end:
                    yield f"cap 0x05+{rel:#04x}", base + rel, 0xff
    for cap in entry.get("extended_capabilities") or []:
        if not isinstance(cap, dict):
            continue
        cap_id, base = to_int(cap.get("id")), to_int(cap.get("offset"))
        if cap_id is None or base is None:
            continue
        for rel, bits in _EXT.get(cap_id, []):
            yield f"ext {cap_id:#06x}+{rel:#04x}", base + rel, bits


def runtime_mask(entries: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Config offset -> bits drivers program, for the functions described by `entries` (old and new).

    Empty when both sides were captured at the firmware hand-off (see `comparing`)."""
    mask: dict[int, int] = {}
    if not driver_state_filtered():
        return mask
    for entry in entries:
        for _rule, offset, bits in filter_rows(entry):
            mask[offset] = mask.get(offset, 0) | bits
    return mask
