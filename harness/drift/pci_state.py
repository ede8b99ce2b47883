"""Config-space bits that the guest's drivers (not the device model) program at run time.

The fingerprint's decoded fields already leave such state out. This table serves the last net
of the PCI comparison, the raw config bytes no decoded field explains: there, a bit a driver
writes must not count as drift. Otherwise the same VM would "drift" between a guest that binds a
driver and one that does not (the reference guest loads only NIC drivers; a full distribution
binds everything), and a bring-your-own image could never match the reference guest.

Every entry is a register a driver writes or a status bit the hardware sets as a side effect of
use, with the driver or the rule that writes it. Anything not listed still counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from harness.drift.diffing import to_int

# standard capability id -> [(offset in the capability, mask)]
_STD: dict[int, list[tuple[int, int]]] = {
    # Power management: PMCSR (power state, PME enable/status), bridge extensions, data
    0x01: [(4, 0xff), (5, 0xff), (6, 0xff), (7, 0xff)],
    # MSI: enable and multiple-message enable; address, data, mask and pending bits (below)
    0x05: [(2, 0x71)],
    # MSI-X: enable, function mask
    0x11: [(3, 0xc0)],
    # PCI Express: device control/status, link control, link status's RW1C bits, slot
    # control/status, root control/status, device control 2, link control 2, link status 2
    0x10: [(0x08, 0xff), (0x09, 0xff), (0x0a, 0xff), (0x0b, 0xff), (0x10, 0xff), (0x11, 0xff), (0x13, 0xc0),
           (0x18, 0xff), (0x19, 0xff), (0x1a, 0xff), (0x1b, 0x01), (0x1c, 0xff), (0x1d, 0xff), (0x22, 0x03),
           (0x28, 0xff), (0x29, 0xff), (0x30, 0xff), (0x31, 0xff), (0x32, 0xff), (0x33, 0xff)],
}
_MSI_DATA = range(4, 0x18)  # message address (64-bit), data, mask and pending bits

# extended capability id -> [(offset in the capability, mask)]
_EXT: dict[int, list[tuple[int, int]]] = {
    # AER: status, mask, severity, control, header log, root error command/status
    0x0001: [(i, 0xff) for i in range(0x04, 0x38)],
    0x000d: [(6, 0xff), (7, 0xff)],                  # ACS control
    0x000e: [(6, 0xff), (7, 0xff)],                  # ARI control
    0x000f: [(6, 0xff), (7, 0xff)],                  # ATS control
    0x001b: [(6, 0xff), (7, 0xff)],                  # PASID control
    0x0013: [(i, 0xff) for i in range(4, 0x10)],     # PRI control/status/allocation
    # SR-IOV: control, status, NumVFs, system page size
    0x0010: [(8, 0xff), (9, 0xff), (0xa, 0xff), (0xb, 0xff), (0x10, 0xff), (0x11, 0xff)]
    + [(i, 0xff) for i in range(0x20, 0x24)],
}

# (vendor, device) -> [(config offset, mask)]: device-specific registers outside capabilities
_DEVICE: dict[tuple[int, int], list[tuple[int, int]]] = {
    # PIIX3 ISA bridge: PIRQ route control, written through the DSDT's _SRS of LNKA..LNKD
    (0x8086, 0x7000): [(o, 0xff) for o in range(0x60, 0x64)],
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


def runtime_mask(entries: Iterable[dict[str, Any]]) -> dict[int, int]:
    """Config offset -> bits drivers program, for the functions described by `entries` (old and new).

    Empty when both sides were captured at the firmware hand-off (see `comparing`)."""
    mask: dict[int, int] = {}
    if not driver_state_filtered():
        return mask

    def add(offset: int, bits: int) -> None:
        mask[offset] = mask.get(offset, 0) | bits

    for entry in entries:
        vendor, device = to_int(entry.get("vendor")), to_int(entry.get("device"))
        for offset, bits in _DEVICE.get((vendor or 0, device or 0), []):
            add(offset, bits)
        caps = [c for c in entry.get("capabilities") or [] if isinstance(c, dict)]
        starts = sorted(o for o in (to_int(c.get("offset")) for c in caps) if o is not None)
        for cap in caps:
            cap_id, base = to_int(cap.get("id")), to_int(cap.get("offset"))
            if cap_id is None or base is None:
                continue
            for rel, bits in _STD.get(cap_id, []):
                add(base + rel, bits)
            if cap_id == 0x05:
                end = min([s for s in starts if s > base] + [base + _MSI_DATA.stop, 0x100])
                for rel in _MSI_DATA:
                    if base + rel < end:
                        add(base + rel, 0xff)
            if cap_id == 0x09 and vendor == 0x1af4 and (cap.get("fields") or {}).get("cfg_type") in (5, "pci_cfg"):
                # virtio's PCI configuration access window: bar, offset, length and data
                for rel in (4, *range(8, 0x14)):
                    add(base + rel, 0xff)
        for cap in entry.get("extended_capabilities") or []:
            if not isinstance(cap, dict):
                continue
            cap_id, base = to_int(cap.get("id")), to_int(cap.get("offset"))
            if cap_id is None or base is None:
                continue
            for rel, bits in _EXT.get(cap_id, []):
                add(base + rel, bits)
    return mask
