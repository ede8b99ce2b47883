"""ACPI: every table the guest saw, keyed by its sysfs file name, header and decoded body.

Keys are the file names under /sys/firmware/acpi/tables (`DSDT`, `FACP`, `SSDT1`, …; tables
the OS loaded at run time under `dynamic/`). Every entry has `label`, `header`, `fields` (the
decoded body: what the guest relies on) and `pointers` (fields that only reflect where the
firmware happened to allocate something: FADT DSDT/FACS addresses, RSDT/XSDT entries, FACS
waking vectors). AML tables (DSDT, SSDT) also carry `asl` (the iasl disassembly without its
banner) and `devices` (the namespace index, see aml.py).

Binary bodies are decoded here with bounds-checked reads; a table that does not parse raises
DecodeError naming the file and the offset. Layouts follow the ACPI specification (6.5).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint import aml
from harness.fingerprint.binary import Blob, hx, read_raw

TABLES = "sys/firmware/acpi/tables"
HEADER_SIZE = 36
MAX_TABLE = 8 << 20
MAX_TABLES = 512
MAX_DEPTH = 4
UNKNOWN_HEX_LIMIT = 1024
MAX_ENTRIES = 65536          # MADT/SRAT structures (4096 CPUs need 8192)
MAX_LOCALITIES = 1024        # SLIT (QEMU allows 128 NUMA nodes)
AML_SIGNATURES = ("DSDT", "SSDT")

# -- generic pieces ---------------------------------------------------------------------------------

ADDRESS_SPACES = {
    0x00: "SystemMemory", 0x01: "SystemIO", 0x02: "PCI_Config", 0x03: "EmbeddedControl",
    0x04: "SMBus", 0x05: "SystemCMOS", 0x06: "PciBarTarget", 0x07: "IPMI", 0x08: "GeneralPurposeIO",
    0x09: "GenericSerialBus", 0x0A: "PCC", 0x0B: "PRM", 0x7F: "FunctionalFixedHW",
}
ACCESS_SIZES = {0: "undefined", 1: "byte", 2: "word", 3: "dword", 4: "qword"}


def _flags(value: int, names: dict[int, str]) -> dict[str, Any]:
    """Every named bit as name → bool, plus the unnamed bits that are set (if any)."""
    out: dict[str, Any] = {name: bool(value >> bit & 1) for bit, name in sorted(names.items())}
    known = sum(1 << bit for bit in names)
    if value & ~known:
        out["other_bits"] = hx(value & ~known)
    return out


def _gas(b: Blob, off: int) -> dict[str, Any]:
    """A Generic Address Structure (12 bytes)."""
    b.need(off, 12, "generic address structure")
    space = b.u8(off)
    return {"space_id": ADDRESS_SPACES.get(space, f"reserved ({hx(space, 2)})"),
            "bit_width": b.u8(off + 1), "bit_offset": b.u8(off + 2),
            "access_size": ACCESS_SIZES.get(b.u8(off + 3), f"reserved ({b.u8(off + 3)})"),
            "address": hx(b.u64(off + 4))}


def header(b: Blob) -> dict[str, Any]:
    """The standard 36-byte description header; its length must be the file's size."""
    if len(b) < HEADER_SIZE:
        raise b.fail(0, f"truncated table header: {len(b)} bytes, a header needs {HEADER_SIZE}")
    length = b.u32(4)
    if length != len(b):
        raise b.fail(4, f"header length {length} does not match the file size {len(b)}")
    return {"signature": _signature(b), "length": length, "revision": b.u8(8),
            "checksum_valid": sum(b.data) & 0xFF == 0, "oem_id": b.text(10, 6),
            "oem_table_id": b.text(16, 8), "oem_revision": hx(b.u32(24)),
            "creator_id": b.text(28, 4), "creator_revision": hx(b.u32(32))}


def _signature(b: Blob) -> str:
    raw = b.bytes(0, 4, "signature")
    if not all(0x20 < c < 0x7F for c in raw):
        raise b.fail(0, f"signature {raw!r} is not printable ASCII")
    return raw.decode("ascii")


def _body_digest(b: Blob, start: int) -> dict[str, Any]:
    body = b.data[start:]
    if len(body) <= UNKNOWN_HEX_LIMIT:
        return {"body_hex": body.hex()}
    return {"body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}


# -- FADT ("FACP") ----------------------------------------------------------------------------------

PM_PROFILES = {0: "Unspecified", 1: "Desktop", 2: "Mobile", 3: "Workstation", 4: "Enterprise Server",
               5: "SOHO Server", 6: "Appliance PC", 7: "Performance Server", 8: "Tablet"}
FADT_FLAGS = {
    0: "wbinvd", 1: "wbinvd_flush", 2: "proc_c1", 3: "p_lvl2_up", 4: "pwr_button", 5: "slp_button",
    6: "fix_rtc", 7: "rtc_s4", 8: "tmr_val_ext", 9: "dck_cap", 10: "reset_reg_sup", 11: "sealed_case",
    12: "headless", 13: "cpu_sw_slp", 14: "pci_exp_wak", 15: "use_platform_clock",
    16: "s4_rtc_sts_valid", 17: "remote_power_on_capable", 18: "force_apic_cluster_model",
    19: "force_apic_physical_destination_mode", 20: "hw_reduced_acpi", 21: "low_power_s0_idle_capable",
    22: "persistent_cpu_caches_0", 23: "persistent_cpu_caches_1",
}
IAPC_BOOT_ARCH = {0: "legacy_devices", 1: "8042", 2: "vga_not_present", 3: "msi_not_supported",
                  4: "pcie_aspm_controls", 5: "cmos_rtc_not_present"}
ARM_BOOT_ARCH = {0: "psci_compliant", 1: "psci_use_hvc"}

FADT_MIN = 116
_U8, _U16, _U32, _U64, _GAS = 1, 2, 4, 8, 12
# (offset, size, name, how): how is "hex", "int", "gas" or a callable on the raw value.
_FADT: list[tuple[int, int, str, Any]] = [
    (44, _U8, "int_model", "hex"),
    (45, _U8, "preferred_pm_profile", lambda v: PM_PROFILES.get(v, f"reserved ({v})")),
    (46, _U16, "sci_int", "int"),
    (48, _U32, "smi_cmd", "hex"),
    (52, _U8, "acpi_enable", "hex"),
    (53, _U8, "acpi_disable", "hex"),
    (54, _U8, "s4bios_req", "hex"),
    (55, _U8, "pstate_cnt", "hex"),
    (56, _U32, "pm1a_evt_blk", "hex"),
    (60, _U32, "pm1b_evt_blk", "hex"),
    (64, _U32, "pm1a_cnt_blk", "hex"),
    (68, _U32, "pm1b_cnt_blk", "hex"),
    (72, _U32, "pm2_cnt_blk", "hex"),
    (76, _U32, "pm_tmr_blk", "hex"),
    (80, _U32, "gpe0_blk", "hex"),
    (84, _U32, "gpe1_blk", "hex"),
    (88, _U8, "pm1_evt_len", "int"),
    (89, _U8, "pm1_cnt_len", "int"),
    (90, _U8, "pm2_cnt_len", "int"),
    (91, _U8, "pm_tmr_len", "int"),
    (92, _U8, "gpe0_blk_len", "int"),
    (93, _U8, "gpe1_blk_len", "int"),
    (94, _U8, "gpe1_base", "int"),
    (95, _U8, "cst_cnt", "hex"),
    (96, _U16, "p_lvl2_lat", "int"),
    (98, _U16, "p_lvl3_lat", "int"),
    (100, _U16, "flush_size", "int"),
    (102, _U16, "flush_stride", "int"),
    (104, _U8, "duty_offset", "int"),
    (105, _U8, "duty_width", "int"),
    (106, _U8, "day_alrm", "hex"),
    (107, _U8, "mon_alrm", "hex"),
    (108, _U8, "century", "hex"),
    (109, _U16, "iapc_boot_arch", lambda v: _flags(v, IAPC_BOOT_ARCH)),
    (112, _U32, "flags", lambda v: _flags(v, FADT_FLAGS)),
    (116, _GAS, "reset_reg", "gas"),
    (128, _U8, "reset_value", "hex"),
    (129, _U16, "arm_boot_arch", lambda v: _flags(v, ARM_BOOT_ARCH)),
    (131, _U8, "fadt_minor_version", "int"),
    (148, _GAS, "x_pm1a_evt_blk", "gas"),
    (160, _GAS, "x_pm1b_evt_blk", "gas"),
    (172, _GAS, "x_pm1a_cnt_blk", "gas"),
    (184, _GAS, "x_pm1b_cnt_blk", "gas"),
    (196, _GAS, "x_pm2_cnt_blk", "gas"),
    (208, _GAS, "x_pm_tmr_blk", "gas"),
    (220, _GAS, "x_gpe0_blk", "gas"),
    (232, _GAS, "x_gpe1_blk", "gas"),
    (244, _GAS, "sleep_control_reg", "gas"),
    (256, _GAS, "sleep_status_reg", "gas"),
    (268, _U64, "hypervisor_vendor_identity", "hex"),
]
_FADT_POINTERS = [(36, _U32, "firmware_ctrl"), (40, _U32, "dsdt"), (132, _U64, "x_firmware_ctrl"),
                  (140, _U64, "x_dsdt")]
_READ = {_U8: Blob.u8, _U16: Blob.u16, _U32: Blob.u32, _U64: Blob.u64}


def _fadt(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that fit in the table's length (a revision 1 FADT is 116 bytes, 6.x is 276)."""
    if len(b) < FADT_MIN:
        raise b.fail(HEADER_SIZE, f"FADT of {len(b)} bytes (ACPI 1.0 defines {FADT_MIN})")
    fields: dict[str, Any] = {}
    for off, size, name, how in _FADT:
        if off + size > len(b):
            continue
        if how == "gas":
            fields[name] = _gas(b, off)
            continue
        value = _READ[size](b, off)
        fields[name] = hx(value) if how == "hex" else value if how == "int" else how(value)
    pointers = {name: hx(_READ[size](b, off)) for off, size, name in _FADT_POINTERS if off + size <= len(b)}
    return fields, pointers


# -- FACS (no standard header) --------------------------------------------------------------------

FACS_FLAGS = {0: "s4bios_f", 1: "64bit_wake_supported_f"}
FACS_OSPM_FLAGS = {0: "64bit_wake_f"}
FACS_MIN = 24


def _facs(b: Blob) -> dict[str, Any]:
    if len(b) < FACS_MIN:
        raise b.fail(0, f"truncated FACS: {len(b)} bytes, it needs at least {FACS_MIN}")
    signature = _signature(b)
    length = b.u32(4)
    if length != len(b):
        raise b.fail(4, f"FACS length {length} does not match the file size {len(b)}")
    fields: dict[str, Any] = {"hardware_signature": hx(b.u32(8)), "global_lock": hx(b.u32(16)),
                              "flags": _flags(b.u32(20), FACS_FLAGS)}
    pointers: dict[str, Any] = {"firmware_waking_vector": hx(b.u32(12))}
    if len(b) >= 32:
        pointers["x_firmware_waking_vector"] = hx(b.u64(24))
    if len(b) >= 33:
        fields["version"] = b.u8(32)
    if len(b) >= 40:
        fields["ospm_flags"] = _flags(b.u32(36), FACS_OSPM_FLAGS)
    head = {"signature": signature, "length": length, "revision": None, "checksum_valid": None,
            "oem_id": None, "oem_table_id": None, "oem_revision": None, "creator_id": None,
            "creator_revision": None}
    return {"header": head, "fields": fields, "pointers": pointers}


# -- MADT ("APIC") --------------------------------------------------------------------------------

MADT_FLAGS = {0: "pcat_compat"}
LAPIC_FLAGS = {0: "enabled", 1: "online_capable"}
POLARITY = {0: "conforms", 1: "active_high", 2: "reserved", 3: "active_low"}
TRIGGER = {0: "conforms", 1: "edge", 2: "reserved", 3: "level"}
MADT_TYPES = {
    0x0: "Processor Local APIC", 0x1: "I/O APIC", 0x2: "Interrupt Source Override",
    0x3: "NMI Source", 0x4: "Local APIC NMI", 0x5: "Local APIC Address Override", 0x6: "I/O SAPIC",
    0x7: "Local SAPIC", 0x8: "Platform Interrupt Sources", 0x9: "Processor Local x2APIC",
    0xA: "Local x2APIC NMI", 0xB: "GIC CPU Interface", 0xC: "GIC Distributor", 0xD: "GIC MSI Frame",
    0xE: "GIC Redistributor", 0xF: "GIC Interrupt Translation Service",
    0x10: "Multiprocessor Wakeup", 0x11: "Core Programmable Interrupt Controller",
    0x12: "Legacy I/O Programmable Interrupt Controller", 0x13: "HyperTransport PIC",
    0x14: "Extend I/O PIC", 0x15: "MSI PIC", 0x16: "Bridge I/O PIC", 0x17: "Low Pin Count PIC",
}


def _inti(value: int) -> dict[str, Any]:
    """MPS INTI flags: polarity (bits 1:0) and trigger mode (bits 3:2)."""
    out: dict[str, Any] = {"polarity": POLARITY[value & 3], "trigger_mode": TRIGGER[value >> 2 & 3]}
    if value & ~0xF:
        out["other_bits"] = hx(value & ~0xF)
    return out


def _madt_entry(b: Blob, off: int, kind: int, length: int) -> dict[str, Any]:
    """The decoded fields of one MADT structure at `off` (type and length already read)."""
    def need(size: int) -> None:
        if length < size:
            raise b.fail(off + 1, f"{MADT_TYPES[kind]} structure of {length} bytes (it needs {size})")

    if kind == 0x0:
        need(8)
        return {"processor_uid": hx(b.u8(off + 2)), "apic_id": hx(b.u8(off + 3)),
                "flags": _flags(b.u32(off + 4), LAPIC_FLAGS)}
    if kind == 0x1:
        need(12)
        return {"io_apic_id": hx(b.u8(off + 2)), "address": hx(b.u32(off + 4)), "gsi_base": b.u32(off + 8)}
    if kind == 0x2:
        need(10)
        return {"bus": b.u8(off + 2), "source": b.u8(off + 3), "gsi": b.u32(off + 4),
                "flags": _inti(b.u16(off + 8))}
    if kind == 0x3:
        need(8)
        return {"flags": _inti(b.u16(off + 2)), "gsi": b.u32(off + 4)}
    if kind == 0x4:
        need(6)
        return {"processor_uid": hx(b.u8(off + 2)), "flags": _inti(b.u16(off + 3)), "lint": b.u8(off + 5)}
    if kind == 0x5:
        need(12)
        return {"address": hx(b.u64(off + 4))}
    if kind == 0x9:
        need(16)
        return {"x2apic_id": hx(b.u32(off + 4)), "flags": _flags(b.u32(off + 8), LAPIC_FLAGS),
                "processor_uid": hx(b.u32(off + 12))}
    if kind == 0xA:
        need(12)
        return {"flags": _inti(b.u16(off + 2)), "processor_uid": hx(b.u32(off + 4)), "lint": b.u8(off + 8)}
    if kind == 0x10:
        need(16)
        return {"mailbox_version": b.u16(off + 2), "mailbox_address": hx(b.u64(off + 8))}
    return {"hex": b.bytes(off + 2, length - 2).hex()}


def _madt(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    fields: dict[str, Any] = {"local_apic_address": hx(b.u32(36)), "flags": _flags(b.u32(40), MADT_FLAGS)}
    entries: list[dict[str, Any]] = []
    off = 44
    while off < len(b):
        kind = b.u8(off)
        length = b.u8(off + 1)
        if length < 2:
            raise b.fail(off + 1, f"MADT structure of type {kind} has length {length}")
        b.need(off, length, f"MADT structure of type {kind}")
        if len(entries) >= MAX_ENTRIES:
            raise b.fail(off, f"more than {MAX_ENTRIES} MADT structures")
        entry: dict[str, Any] = {"type": kind, "name": MADT_TYPES.get(kind, "Reserved"), "length": length}
        entry.update(_madt_entry(b, off, kind, length) if kind in MADT_TYPES else
                     {"hex": b.bytes(off + 2, length - 2).hex()})
        entries.append(entry)
        off += length
    fields["entries"] = entries
    return fields, {}


# -- HPET -----------------------------------------------------------------------------------------

PAGE_PROTECTION = {0: "none", 1: "4k", 2: "64k"}


def _hpet(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    block_id = b.u32(36)
    event_timer_block_id: dict[str, Any] = {
        "hardware_rev_id": hx(block_id & 0xFF),
        "comparators": (block_id >> 8 & 0x1F) + 1,
        "counter_size_64bit": bool(block_id >> 13 & 1),
        "legacy_replacement": bool(block_id >> 15 & 1),
        "pci_vendor_id": hx(block_id >> 16, 4),
    }
    if block_id >> 14 & 1:
        event_timer_block_id["reserved_bit14"] = True
    protection = b.u8(55)
    fields = {"event_timer_block_id": event_timer_block_id, "base_address": _gas(b, 40),
              "hpet_number": b.u8(52), "min_clock_tick": b.u16(53),
              "page_protection": PAGE_PROTECTION.get(protection & 0xF, f"reserved ({protection & 0xF})"),
              "oem_attributes": hx(protection >> 4)}
    return fields, {}


# -- MCFG -----------------------------------------------------------------------------------------


def _mcfg(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    b.need(36, 8, "reserved field")
    if (len(b) - 44) % 16:
        raise b.fail(44, f"{len(b) - 44} bytes of allocations is not a multiple of 16")
    allocations = []
    for off in range(44, len(b), 16):
        allocations.append({"base_address": hx(b.u64(off)), "segment": b.u16(off + 8),
                            "start_bus": b.u8(off + 10), "end_bus": b.u8(off + 11)})
    return {"allocations": allocations}, {}


# -- WAET -----------------------------------------------------------------------------------------

WAET_FLAGS = {0: "rtc_good", 1: "acpi_pm_timer_good"}


def _waet(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"flags": _flags(b.u32(36), WAET_FLAGS)}, {}


# -- TPM2 and BGRT ---------------------------------------------------------------------------------

TPM2_START_METHODS = {0: "not allowed", 1: "legacy", 2: "ACPI start", 6: "TIS (memory mapped)",
                      7: "CRB", 8: "CRB with ACPI start", 11: "CRB with ARM SMC", 12: "FIFO over I2C"}


def _tpm2(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    """TCG ACPI Specification, TPM2 table: platform class, control area, start method and its
    parameters; the event log's minimum length (LAML) and address (LASA, allocated: a pointer)."""
    b.need(36, 20, "TPM2 body")
    method = b.u32(48)
    fields: dict[str, Any] = {"platform_class": {0: "client", 1: "server"}.get(b.u16(36), hx(b.u16(36))),
                              "control_area_address": hx(b.u64(40)), "start_method": method,
                              "start_method_name": TPM2_START_METHODS.get(method, "reserved")}
    pointers: dict[str, Any] = {}
    if len(b) >= 64:
        fields["start_method_parameters"] = b.bytes(52, 12).hex()
    if len(b) >= 76:
        fields["log_area_minimum_length"] = b.u32(64)
        pointers["log_area_start_address"] = hx(b.u64(68))
    return fields, pointers


BGRT_IMAGE_TYPES = {0: "bitmap"}


def _bgrt(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    """Boot Graphics Resource Table: version, status, image type and offset; the image's address is
    the firmware's allocation (a pointer), not what the OS compares."""
    b.need(36, 20, "BGRT body")
    return ({"version": b.u16(36), "status": {"displayed": bool(b.u8(38) & 1), "orientation": b.u8(38) >> 1 & 3},
             "image_type": BGRT_IMAGE_TYPES.get(b.u8(39), hx(b.u8(39))),
             "image_offset_x": b.u32(48), "image_offset_y": b.u32(52)},
            {"image_address": hx(b.u64(40))})


# -- SRAT / SLIT ----------------------------------------------------------------------------------

SRAT_TYPES = {0: "Processor Local APIC/SAPIC Affinity", 1: "Memory Affinity",
              2: "Processor Local x2APIC Affinity",
              3: "GICC Affinity", 4: "GIC ITS Affinity", 5: "Generic Initiator Affinity",
              6: "Generic Port Affinity"}
SRAT_CPU_FLAGS = {0: "enabled"}
SRAT_MEM_FLAGS = {0: "enabled", 1: "hot_pluggable", 2: "non_volatile"}


def _srat_entry(b: Blob, off: int, kind: int, length: int) -> dict[str, Any]:
    def need(size: int) -> None:
        if length < size:
            raise b.fail(off + 1, f"{SRAT_TYPES[kind]} structure of {length} bytes (it needs {size})")

    if kind == 0:
        need(16)
        domain = b.u8(off + 2) | int.from_bytes(b.bytes(off + 9, 3), "little") << 8
        return {"proximity_domain": domain, "apic_id": hx(b.u8(off + 3)),
                "flags": _flags(b.u32(off + 4), SRAT_CPU_FLAGS), "local_sapic_eid": hx(b.u8(off + 8)),
                "clock_domain": b.u32(off + 12)}
    if kind == 1:
        need(40)
        return {"proximity_domain": b.u32(off + 2), "base_address": hx(b.u64(off + 8)),
                "length": hx(b.u64(off + 16)), "flags": _flags(b.u32(off + 28), SRAT_MEM_FLAGS)}
    if kind == 2:
        need(24)
        return {"proximity_domain": b.u32(off + 4), "x2apic_id": hx(b.u32(off + 8)),
                "flags": _flags(b.u32(off + 12), SRAT_CPU_FLAGS), "clock_domain": b.u32(off + 16)}
    if kind == 5:
        need(32)
        return {"device_handle_type": b.u8(off + 3), "proximity_domain": b.u32(off + 4),
                "device_handle": b.bytes(off + 8, 16).hex(), "flags": hx(b.u32(off + 24))}
    return {"hex": b.bytes(off + 2, length - 2).hex()}


def _srat(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    fields: dict[str, Any] = {"table_revision": b.u32(36), "reserved": hx(b.u64(40))}
    entries: list[dict[str, Any]] = []
    off = 48
    while off < len(b):
        kind = b.u8(off)
        length = b.u8(off + 1)
        if length < 2:
            raise b.fail(off + 1, f"SRAT structure of type {kind} has length {length}")
        b.need(off, length, f"SRAT structure of type {kind}")
        if len(entries) >= MAX_ENTRIES:
            raise b.fail(off, f"more than {MAX_ENTRIES} SRAT structures")
        entry: dict[str, Any] = {"type": kind, "name": SRAT_TYPES.get(kind, "Reserved"), "length": length}
        entry.update(_srat_entry(b, off, kind, length))
        entries.append(entry)
        off += length
    fields["entries"] = entries
    return fields, {}


def _slit(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
    count = b.u64(36)
    room = len(b) - 44
    if count > MAX_LOCALITIES:
        raise b.fail(36, f"{count} localities (more than {MAX_LOCALITIES})")
    if count * count != room:
        raise b.fail(36, f"{count} localities need {count * count} bytes of distances, the table has {room}")
    matrix = [list(b.bytes(44 + i * count, count)) for i in range(count)]
    return {"localities": count, "distances": matrix}, {}


# -- RSDT / XSDT ----------------------------------------------------------------------------------


def _sdt(width: int) -> Callable[[Blob], tuple[dict[str, Any], dict[str, Any]]]:
    def decode(b: Blob) -> tuple[dict[str, Any], dict[str, Any]]:
        if (len(b) - HEADER_SIZE) % width:
            raise b.fail(HEADER_SIZE, f"entries are not a whole number of {width}-byte pointers")
        read = Blob.u32 if width == 4 else Blob.u64
        entries = [hx(read(b, off)) for off in range(HEADER_SIZE, len(b), width)]
        return {"entry_count": len(entries)}, {"entries": entries}
    return decode


BODY_DECODERS: dict[str, Callable[[Blob], tuple[dict[str, Any], dict[str, Any]]]] = {
    "FACP": _fadt, "APIC": _madt, "HPET": _hpet, "MCFG": _mcfg, "WAET": _waet, "SRAT": _srat,
    "SLIT": _slit, "RSDT": _sdt(4), "XSDT": _sdt(8), "TPM2": _tpm2, "BGRT": _bgrt,
}


def decode_table(b: Blob) -> dict[str, Any]:
    """Header and decoded body of one table (AML tables: header only; see decode)."""
    if b.data[:4] == b"FACS":
        return _facs(b)
    head = header(b)
    decoder = BODY_DECODERS.get(head["signature"])
    if decoder is not None:
        fields, pointers = decoder(b)
    elif head["signature"] in AML_SIGNATURES:
        fields, pointers = {}, {}
    else:
        fields, pointers = _body_digest(b, HEADER_SIZE), {}
    return {"header": head, "fields": fields, "pointers": pointers}


# -- the capture ----------------------------------------------------------------------------------


def _table_files(raw: Path) -> list[tuple[str, str]]:
    """(key, path relative to raw) of every table file, in a stable order (top level first)."""
    base = raw / TABLES
    if not base.is_dir():
        raise DecodeError(TABLES, None, "the capture has no ACPI tables")
    found: list[tuple[str, str]] = []
    pending = [(base, 0)]
    while pending:
        folder, depth = pending.pop()
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(raw).as_posix()
            if path.is_symlink():
                raise DecodeError(rel, None, "a symbolic link where a table file is expected")
            if path.is_dir():
                if depth + 1 >= MAX_DEPTH:
                    raise DecodeError(rel, None, "ACPI table folders nested too deep")
                pending.append((path, depth + 1))
            elif path.is_file():
                found.append((path.relative_to(base).as_posix(), rel))
            if len(found) > MAX_TABLES:
                raise DecodeError(TABLES, None, f"more than {MAX_TABLES} table files")
    return sorted(found, key=lambda kr: (kr[0].count("/"), kr[0]))


def _check_name(key: str, rel: str, signature: str) -> None:
    name = key.rsplit("/", 1)[-1]
    if not (name == signature or (name.startswith(signature) and name[len(signature):].isdigit())):
        raise DecodeError(rel, 0, f"signature {signature!r} does not match the table file name {name!r}")


def decode(raw: Path) -> dict[str, Any]:
    """{key: entry} for every ACPI table of the capture; AML tables decompiled and indexed."""
    out: dict[str, Any] = {}
    aml_tables: dict[str, tuple[str, bytes]] = {}
    for key, rel in _table_files(raw):
        blob = Blob(rel, read_raw(raw, rel, MAX_TABLE))
        entry = decode_table(blob)
        signature = entry["header"]["signature"]
        _check_name(key, rel, signature)
        out[key] = {"label": key, **entry}
        if signature in AML_SIGNATURES:
            aml_tables[key] = (rel, blob.data)
    for key, (asl, devices) in aml.decompile(aml_tables).items():
        out[key]["asl"] = asl
        out[key]["devices"] = devices
    return out
