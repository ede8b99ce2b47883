"""Fingerprints for the drift and report tests, and helpers that mutate exactly one thing.

`base_fingerprint()` is a real decoded capture from tests/data/captures/ when one exists and
the decoders can read it; until then it is a synthetic fingerprint written to SCHEMA.md
(a q35 guest with 2 vCPUs, virtio devices, DSDT with hotplug slots). The mutation helpers work
on either: they find their target in whatever fingerprint they are given.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.categories import guest_names

DATA = Path(__file__).parent / "data"

# -- PCI ------------------------------------------------------------------------------------------

_CAP_IDS = {"Power Management": 0x01, "MSI": 0x05, "Vendor Specific": 0x09, "PCI Express": 0x10,
            "MSI-X": 0x11, "SATA": 0x12}


def config_bytes(entry: dict[str, Any], size: int = 256) -> bytes:
    """A config space consistent with the decoded entry (ids, class, capability chain)."""
    cfg = bytearray(size)
    cfg[0:2] = int(entry["vendor"], 16).to_bytes(2, "little")
    cfg[2:4] = int(entry["device"], 16).to_bytes(2, "little")
    cfg[8] = int(entry["revision"], 16)
    cfg[9] = int(entry["class"]["prog_if"], 16)
    cfg[10] = int(entry["class"]["sub"], 16)
    cfg[11] = int(entry["class"]["base"], 16)
    cfg[0x2C:0x2E] = int(entry["subsystem_vendor"], 16).to_bytes(2, "little")
    cfg[0x2E:0x30] = int(entry["subsystem_device"], 16).to_bytes(2, "little")
    caps = entry.get("capabilities") or []
    if caps:
        cfg[6] |= 0x10
        cfg[0x34] = int(caps[0]["offset"], 16)
    for i, cap in enumerate(caps):
        off = int(cap["offset"], 16)
        cfg[off] = int(cap["id"], 16)
        cfg[off + 1] = int(caps[i + 1]["offset"], 16) if i + 1 < len(caps) else 0
        for j, value in enumerate(cap["fields"].values()):
            if isinstance(value, int) and off + 2 + j < size:
                cfg[off + 2 + j] = value & 0xFF
    return bytes(cfg)


def refresh_config(entry: dict[str, Any]) -> None:
    entry["config_hex"] = config_bytes(entry, len(bytes.fromhex(entry["config_hex"]))).hex()


def _cap(name: str, offset: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"{_CAP_IDS[name]:#04x}", "name": name, "offset": f"{offset:#x}", "fields": fields}


def _virtio_caps() -> list[dict[str, Any]]:
    return [_cap("Vendor Specific", 0x84, cfg_type=5, bar=0, length=20),
            _cap("Vendor Specific", 0x70, cfg_type=2, bar=4, length=20),
            _cap("Vendor Specific", 0x60, cfg_type=4, bar=4, length=16),
            _cap("Vendor Specific", 0x50, cfg_type=3, bar=4, length=16),
            _cap("Vendor Specific", 0x40, cfg_type=1, bar=4, length=16)]


def _pci(vendor: int, device: int, label: str, cls: tuple[int, int, int, str], *, subsystem: tuple[int, int],
         bars: Sequence[tuple[int, str, bool, int]] = (), rom: int | None = None, pin: str | None = None,
         caps: list[dict[str, Any]] | None = None, revision: int = 0, header_type: int = 0) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "label": label, "vendor": f"{vendor:#06x}", "device": f"{device:#06x}",
        "subsystem_vendor": f"{subsystem[0]:#06x}", "subsystem_device": f"{subsystem[1]:#06x}",
        "vendor_name": None, "device_name": None,
        "class": {"base": f"{cls[0]:#04x}", "sub": f"{cls[1]:#04x}", "prog_if": f"{cls[2]:#04x}", "name": cls[3]},
        "revision": f"{revision:#04x}", "header_type": header_type, "multifunction": False,
        "interrupt_pin": pin, "command_fixed": {"io": True, "memory": True},
        "status": {"capabilities_list": bool(caps), "66mhz": False},
        "bars": [{"index": i, "kind": k, "prefetchable": p, "size": s} for i, k, p, s in bars],
        "rom_size": rom, "capabilities": caps or [], "extended_capabilities": [],
    }
    entry["config_hex"] = config_bytes(entry).hex()
    return entry


def _pci_category() -> dict[str, Any]:
    return {
        "0000:00:00.0": _pci(0x8086, 0x29C0, "[8086:29c0] 82G33/G31/P35/P31 Express DRAM Controller",
                             (0x06, 0x00, 0x00, "Host bridge"), subsystem=(0x1AF4, 0x1100)),
        "0000:00:01.0": _pci(0x1234, 0x1111, "[1234:1111] VGA compatible controller",
                             (0x03, 0x00, 0x00, "VGA compatible controller"), subsystem=(0x1AF4, 0x1100),
                             bars=[(0, "mem32", True, 16 << 20), (2, "mem32", False, 4096)], rom=65536,
                             revision=2),
        "0000:00:03.0": _pci(0x1AF4, 0x1000, "[1af4:1000] Virtio network device",
                             (0x02, 0x00, 0x00, "Ethernet controller"), subsystem=(0x1AF4, 0x0001),
                             bars=[(0, "io", False, 32), (1, "mem32", False, 4096), (4, "mem64", True, 16384)],
                             rom=262144, pin="INTA",
                             caps=[_cap("MSI-X", 0x98, table_size=3, table_bar=1, pba_bar=1),
                                   *_virtio_caps()]),
        "0000:00:05.0": _pci(0x1AF4, 0x1005, "[1af4:1005] Virtio RNG",
                             (0x00, 0xFF, 0x00, "Unclassified device"), subsystem=(0x1AF4, 0x0004),
                             bars=[(0, "io", False, 32), (4, "mem64", True, 16384)], pin="INTA",
                             caps=_virtio_caps()),
        "0000:00:1f.0": _pci(0x8086, 0x2918, "[8086:2918] 82801IB (ICH9) LPC Interface Controller",
                             (0x06, 0x01, 0x00, "ISA bridge"), subsystem=(0x1AF4, 0x1100), revision=2),
        "0000:00:1f.2": _pci(0x8086, 0x2922, "[8086:2922] 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller",
                             (0x01, 0x06, 0x01, "SATA controller"), subsystem=(0x1AF4, 0x1100),
                             bars=[(4, "io", False, 32), (5, "mem32", False, 4096)], pin="INTA", revision=2,
                             caps=[_cap("SATA", 0xA8, revision=0x10), _cap("MSI", 0x80, multiple_message_count=1)]),
    }


# -- CPUID ----------------------------------------------------------------------------------------

_BIT_NAMES = {
    (0x1, "ecx"): {0: "sse3", 9: "ssse3", 13: "cx16", 15: "pdcm", 19: "sse4_1", 20: "sse4_2", 23: "popcnt",
                   31: "hypervisor"},
    (0x1, "edx"): {0: "fpu", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 8: "cx8", 9: "apic", 11: "sep", 15: "cmov",
                   23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2"},
    (0x7, "ebx"): {0: "fsgsbase", 3: "bmi1", 8: "bmi2"},
    (0x80000001, "ecx"): {0: "lahf_lm"},
    (0x80000001, "edx"): {11: "syscall", 20: "nx", 29: "lm"},
}


def _features(leaf: int, regs: dict[str, int]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for reg, value in regs.items():
        names = _BIT_NAMES.get((leaf, reg), {})
        present = {str(b): n for b, n in names.items() if value >> b & 1}
        if present:
            out[reg] = present
    return out


def _cpuid_entry(vcpu: int, leaf: int, subleaf: int, regs: dict[str, int], fields: dict[str, Any],
                 per_vcpu: list[str] | None = None) -> dict[str, Any]:
    return {"label": f"leaf {leaf:#x} subleaf {subleaf:#x}", "vcpu": vcpu, "leaf": leaf, "subleaf": subleaf,
            **{r: f"{regs[r]:#010x}" for r in ("eax", "ebx", "ecx", "edx")},
            "features": _features(leaf, regs), "fields": fields, "per_vcpu": per_vcpu or []}


def _cpuid_category(vcpus: int = 2) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for v in range(vcpus):
        leaves: list[tuple[int, int, dict[str, int], dict[str, Any], list[str] | None]] = [
            (0x0, 0, {"eax": 0xD, "ebx": 0x756E6547, "ecx": 0x6C65746E, "edx": 0x49656E69},
             {"max_leaf": 13, "vendor": "GenuineIntel"}, None),
            (0x1, 0, {"eax": 0x663, "ebx": (v << 24) | (vcpus << 16) | 0x0800, "ecx": 0x80802001 | (1 << 9),
                      "edx": 0x078BFBFD & ~(1 << 2)},
             {"family": 6, "model": 6, "stepping": 3, "clflush_size": 64, "apic_id": v}, ["ebx.apic_id"]),
            (0x4, 0, {"eax": 0x121, "ebx": 0x1C0003F, "ecx": 0x3F, "edx": 0x1},
             {"cache_level": 1, "cache_type": "data", "size": 32768}, None),
            (0x4, 1, {"eax": 0x122, "ebx": 0x1C0003F, "ecx": 0x3F, "edx": 0x1},
             {"cache_level": 1, "cache_type": "instruction", "size": 32768}, None),
            (0x7, 0, {"eax": 0x0, "ebx": 0x0, "ecx": 0x0, "edx": 0x0}, {"max_subleaf": 0}, None),
            (0xB, 0, {"eax": 0x0, "ebx": 0x1, "ecx": 0x100, "edx": v}, {"x2apic_id": v}, ["edx.x2apic_id"]),
            (0x80000000, 0, {"eax": 0x80000008, "ebx": 0, "ecx": 0, "edx": 0}, {"max_extended_leaf": 0x80000008},
             None),
            (0x80000001, 0, {"eax": 0x663, "ebx": 0, "ecx": 0x1, "edx": 0x20100800}, {}, None),
        ]
        for leaf, subleaf, regs, fields, per in leaves:
            out[f"{v}/{leaf:#010x}/{subleaf:#x}"] = _cpuid_entry(v, leaf, subleaf, regs, fields, per)
    return out


# -- ACPI -----------------------------------------------------------------------------------------

def _dev(name: str, names: dict[str, str], methods: dict[str, list[str]] | None = None,
         children: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "names": names, "methods": methods or {}, "children": children or []}


def _slot(n: int) -> dict[str, Any]:
    return _dev(f"S{n * 8:02X}", {"_SUN": f"0x{n:02X}", "_ADR": f"0x{n:04X}0000"},
                {"_EJ0": ["Method (_EJ0, 1, NotSerialized)  // _EJx: Eject Device, x=0-9", "{",
                          "    PCEJ (BSEL, _SUN)", "}"]})


DSDT_TREE: list[dict[str, Any]] = [
    _dev("PCI0", {"_HID": 'EisaId ("PNP0A08")', "_CID": 'EisaId ("PNP0A03")', "_ADR": "Zero", "_UID": "Zero"},
         {"_OSC": ["Method (_OSC, 4, NotSerialized)  // _OSC: Operating System Capabilities", "{",
                   "    CreateDWordField (Arg3, Zero, CDW1)", "    Return (Arg3)", "}"]},
         [_slot(2), _slot(3), _slot(4),
          _dev("SF8", {"_ADR": "0x001F0000"},
               children=[_dev("RTC", {"_HID": 'EisaId ("PNP0B00")'}),
                         _dev("COM1", {"_HID": 'EisaId ("PNP0501")', "_UID": "One"},
                              {"_STA": ["Method (_STA, 0, NotSerialized)  // _STA: Status", "{",
                                        "    Return (0x0F)", "}"]})])]),
    _dev("HPET", {"_HID": 'EisaId ("PNP0103")', "_UID": "Zero"},
         {"_STA": ["Method (_STA, 0, NotSerialized)  // _STA: Status", "{",
                   "    Local0 = HPTE /* \\_SB_.HPET.HPTE */", "    If ((Local0 == Zero))", "    {",
                   "        Return (Zero)", "    }", "", "    Return (0x0F)", "}"]}),
]

_COMMENTS = {"_HID": "  // _HID: Hardware ID", "_CID": "  // _CID: Compatible ID", "_ADR": "  // _ADR: Address",
             "_UID": "  // _UID: Unique ID", "_SUN": "  // _SUN: Slot User Number"}


def _value(asl_value: str) -> Any:
    if asl_value.startswith("EisaId"):
        return asl_value.split('"')[1]
    return {"Zero": 0, "One": 1}.get(asl_value, asl_value)


def _render(node: dict[str, Any], indent: int, parent: str, devices: dict[str, Any]) -> list[str]:
    pad = " " * indent
    path = f"{parent}.{node['name']}" if parent != "\\" else f"\\{node['name']}"
    lines = [f"{pad}Device ({node['name']})", f"{pad}{{"]
    for name, value in node["names"].items():
        lines.append(f"{pad}    Name ({name}, {value}){_COMMENTS.get(name, '')}")
    for body in node["methods"].values():
        lines.append("")
        lines += [f"{pad}    {line}" for line in body]
    for child in node["children"]:
        lines.append("")
        lines += _render(child, indent + 4, path, devices)
    lines.append(f"{pad}}}")
    names = node["names"]
    devices[path] = {
        "hid": _value(names["_HID"]) if "_HID" in names else None,
        "cid": _value(names["_CID"]) if "_CID" in names else None,
        "uid": _value(names["_UID"]) if "_UID" in names else None,
        "adr": _value(names["_ADR"]) if "_ADR" in names else None,
        "sun": int(names["_SUN"], 16) if "_SUN" in names else None,
        "names": sorted(names) + [c["name"] for c in node["children"]],
        "methods": {m: "\n".join(body) for m, body in node["methods"].items()},
        "asl": "\n".join(lines),
    }
    return lines


def render_dsdt(tree: list[dict[str, Any]], oem_revision: int = 1) -> tuple[dict[str, Any], str]:
    """(devices, whole ASL) of a DSDT built from `tree`."""
    devices: dict[str, Any] = {}
    lines = ["/*", " * Intel ACPI Component Architecture", " * AML/ASL+ Disassembler version 20221020",
             " *", " * Disassembly of DSDT", " */",
             f'DefinitionBlock ("", "DSDT", 1, "BOCHS ", "BXPC    ", 0x{oem_revision:08X})', "{",
             "    Name (PICF, Zero)", "    Method (_PIC, 1, NotSerialized)  // _PIC: Interrupt Model", "    {",
             "        PICF = Arg0", "    }", "", "    Scope (\\_SB)", "    {"]
    for i, node in enumerate(tree):
        if i:
            lines.append("")
        lines += _render(node, 8, "\\_SB", devices)
    lines += ["    }", "}"]
    return devices, "\n".join(lines) + "\n"


def _header(signature: str, length: int, revision: int, oem_table_id: str = "BXPC    ") -> dict[str, Any]:
    return {"signature": signature, "length": length, "revision": revision, "checksum_valid": True,
            "oem_id": "BOCHS ", "oem_table_id": oem_table_id, "oem_revision": 1, "creator_id": "BXPC",
            "creator_revision": 1}


def _acpi_category(vcpus: int = 2) -> dict[str, Any]:
    devices, asl = render_dsdt(copy.deepcopy(DSDT_TREE))
    return {
        "DSDT": {"label": "DSDT", "header": _header("DSDT", 7771, 1), "fields": {}, "pointers": {},
                 "devices": devices, "asl": asl},
        "FACP": {"label": "FACP", "header": _header("FACP", 244, 3),
                 "fields": {"sci_interrupt": 9, "pm1a_event_block": "0x600", "pm_timer_block": "0x608",
                            "flags": {"wbinvd": True, "proc_c1": True, "slp_button": True, "rtc_s4": True,
                                      "use_platform_clock": True}},
                 "pointers": {"facs": "0x7ffe0000", "dsdt": "0x7ffe0040", "x_dsdt": "0x0"}},
        "APIC": {"label": "APIC", "header": _header("APIC", 120, 1),
                 "fields": {"local_apic_address": "0xfee00000", "flags": {"pcat_compat": True},
                            "entries": [{"type": "local_apic", "processor_id": v, "apic_id": v, "enabled": True}
                                        for v in range(vcpus)]
                            + [{"type": "io_apic", "io_apic_id": 0, "address": "0xfec00000", "gsi_base": 0}]},
                 "pointers": {}},
        "HPET": {"label": "HPET", "header": _header("HPET", 56, 1),
                 "fields": {"event_timer_block_id": "0x8086a201", "base_address": "0xfed00000",
                            "min_tick": 0}, "pointers": {}},
        "MCFG": {"label": "MCFG", "header": _header("MCFG", 60, 1),
                 "fields": {"allocations": [{"base": "0xb0000000", "segment": 0, "start_bus": 0,
                                             "end_bus": 255}]}, "pointers": {}},
    }


# -- SMBIOS, e820 ---------------------------------------------------------------------------------

def _smbios_category() -> dict[str, Any]:
    def s(t: int, label: str, handle: int, fields: dict[str, Any], strings: list[str]) -> dict[str, Any]:
        return {"label": f"type {t} {label}", "type": t, "handle": f"{handle:#06x}", "fields": fields,
                "strings": strings}

    return {
        "entry_point": {"label": "entry point", "kind": "2.x", "version": "2.8", "table_length": 383,
                        "max_structure_size": 84, "structure_count": 9},
        "0/0": s(0, "BIOS Information", 0x0000,
                 {"vendor": "SeaBIOS", "bios_version": "1.16.2-debian-1.16.2-1", "release_date": "04/01/2014",
                  "rom_size": 65536, "characteristics": {"pci": False, "bios_characteristics_not_supported": True},
                  "major_release": 0, "minor_release": 0},
                 ["SeaBIOS", "1.16.2-debian-1.16.2-1", "04/01/2014"]),
        "1/0": s(1, "System Information", 0x0100,
                 {"manufacturer": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)", "version": "pc-q35-7.2",
                  "serial_number": None, "uuid": "6a1e0d3c-0000-4000-8000-000000000001", "wake_up_type": "Power Switch",
                  "sku_number": None, "family": None},
                 ["QEMU", "Standard PC (Q35 + ICH9, 2009)", "pc-q35-7.2"]),
        "3/0": s(3, "Chassis Information", 0x0300,
                 {"manufacturer": "QEMU", "type": "Other", "version": "pc-q35-7.2", "serial_number": None,
                  "asset_tag": None, "boot_up_state": "Safe", "power_supply_state": "Safe"},
                 ["QEMU", "pc-q35-7.2"]),
        "4/0": s(4, "Processor Information", 0x0400,
                 {"socket": "CPU 0", "processor_type": "Central Processor", "family": "Other",
                  "manufacturer": "QEMU", "version": "pc-q35-7.2", "max_speed": 2000, "current_speed": 2000,
                  "core_count": 1, "thread_count": 1},
                 ["CPU 0", "QEMU", "pc-q35-7.2"]),
        "4/1": s(4, "Processor Information", 0x0401,
                 {"socket": "CPU 1", "processor_type": "Central Processor", "family": "Other",
                  "manufacturer": "QEMU", "version": "pc-q35-7.2", "max_speed": 2000, "current_speed": 2000,
                  "core_count": 1, "thread_count": 1},
                 ["CPU 1", "QEMU", "pc-q35-7.2"]),
        "16/0": s(16, "Physical Memory Array", 0x1000,
                  {"location": "Other", "use": "System Memory", "maximum_capacity": 268435456,
                   "number_of_devices": 1}, []),
        "17/0": s(17, "Memory Device", 0x1100,
                  {"array_handle": "0x1000", "size": 268435456, "device_locator": "DIMM 0",
                   "manufacturer": "QEMU"}, ["DIMM 0", "QEMU"]),
        "19/0": s(19, "Memory Array Mapped Address", 0x1300,
                  {"start": "0x0", "end": "0xfffffff", "array_handle": "0x1000"}, []),
        "32/0": s(32, "System Boot Information", 0x2000, {"status": "No errors detected"}, []),
    }


def _e820_category() -> dict[str, Any]:
    ranges = [("0x0", "0x9fbff", "System RAM"), ("0x9fc00", "0x9ffff", "Reserved"),
              ("0xf0000", "0xfffff", "Reserved"), ("0x100000", "0xffdffff", "System RAM"),
              ("0xffe0000", "0xfffffff", "Reserved"), ("0xb0000000", "0xbfffffff", "Reserved"),
              ("0xfffc0000", "0xffffffff", "Reserved")]
    return {"map": {"label": "memory map", "ranges": [{"start": a, "end": b, "type": t} for a, b, t in ranges]}}


def synthetic_fingerprint() -> dict[str, Any]:
    return {
        "schema": 1,
        "source": {"capture": "synthetic", "machine": "pc-q35-7.2", "machine_resolved": "pc-q35-7.2",
                   "guest": "minimal", "image": "0" * 64,
                   "build": {"spec": "debian:bookworm", "version": "7.2.15",
                             "package_version": "1:7.2+dfsg-7+deb12u13", "sha256": "ab" * 32}},
        "pci": _pci_category(),
        "cpuid": _cpuid_category(),
        "acpi": _acpi_category(),
        "smbios": _smbios_category(),
        "e820": _e820_category(),
        "uefi": {},                       # a SeaBIOS guest: no UEFI entries
    }


# -- the base fingerprint: real when available ----------------------------------------------------

def real_captures() -> list[Path]:
    """Complete captures under tests/data/captures/, the richest first (virtio devices with
    MSI-X and vendor capabilities, then the Windows profile's PCIe devices)."""
    root = DATA / "captures"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "manifest.json").is_file()]

    def rank(p: Path) -> tuple[int, str]:
        order = ("linux-virtio", "windows", "minimal", "legacy")
        return (next((i for i, name in enumerate(order) if p.name.endswith(name)), len(order)), p.name)

    return sorted(found, key=rank)


_REAL: dict[str, Any] | None = None
_REAL_TRIED = False
CATEGORIES = guest_names()


def _decode_real(path: Path) -> dict[str, Any] | None:
    """The capture decoded by `fingerprint_capture`; while some decoders are still missing, the
    categories that can be decoded, the synthetic ones for the rest; None if none can be."""
    try:
        from harness.fingerprint import fingerprint_capture

        return fingerprint_capture(path)
    except ImportError:
        pass
    try:
        from harness.capture import load_capture

        capture = load_capture(path)
    except ImportError:
        return None
    fp = synthetic_fingerprint()
    decoded = False
    for category in CATEGORIES:
        try:
            module = importlib.import_module(f"harness.fingerprint.{category}")
        except ImportError:
            continue
        fp[category] = module.decode(capture.raw)
        decoded = True
    return fp if decoded else None


def real_fingerprint() -> dict[str, Any] | None:
    """The first real capture under tests/data/captures/, decoded; None until one can be."""
    global _REAL, _REAL_TRIED
    if not _REAL_TRIED:
        _REAL_TRIED = True
        captures = real_captures()
        _REAL = _decode_real(captures[0]) if captures else None
    return copy.deepcopy(_REAL) if _REAL is not None else None


def base_fingerprint() -> dict[str, Any]:
    """A real decoded capture when there is one (QABI_TEST_SYNTHETIC=1 forces the synthetic one)."""
    if os.environ.get("QABI_TEST_SYNTHETIC"):
        return synthetic_fingerprint()
    return real_fingerprint() or synthetic_fingerprint()


# -- mutation helpers (work on real and synthetic fingerprints) -----------------------------------

def pci_with_caps(fp: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A PCI function with at least one capability (preferring one with MSI-X)."""
    candidates = [(k, e) for k, e in sorted(fp["pci"].items()) if e.get("capabilities")]
    for key, entry in candidates:
        if any(c.get("name") == "MSI-X" for c in entry["capabilities"]):
            return key, entry
    assert candidates, "no PCI function with capabilities"
    return candidates[0]


def set_cpuid_bit(fp: dict[str, Any], leaf: int, subleaf: int, reg: str, bit: int, value: int, name: str,
                  vcpus: set[int] | None = None) -> None:
    """Set one CPUID bit (and its feature name) on every vCPU, or only on `vcpus`."""
    for entry in fp["cpuid"].values():
        if entry["leaf"] != leaf or entry["subleaf"] != subleaf or (vcpus is not None and entry["vcpu"] not in vcpus):
            continue
        regval = int(entry[reg], 16)
        regval = regval | (1 << bit) if value else regval & ~(1 << bit)
        entry[reg] = f"{regval:#010x}"
        names = entry.setdefault("features", {}).setdefault(reg, {})
        if value:
            names[str(bit)] = name
        else:
            names.pop(str(bit), None)


def cpuid_vcpus(fp: dict[str, Any]) -> list[int]:
    return sorted({e["vcpu"] for e in fp["cpuid"].values()})


def as_in(text: str, block: str) -> str | None:
    """`block` as it occurs in `text`: verbatim, or re-indented (decoders may dedent a device's
    ASL); None when it does not occur."""
    if block in text:
        return block
    lines = block.splitlines()
    if not lines:
        return None
    first = lines[0].strip()
    for line in text.splitlines():
        if line.strip() == first:
            pad = line[: len(line) - len(line.lstrip())]
            candidate = "\n".join(pad + ln if ln.strip() else ln for ln in lines)
            if candidate in text:
                return candidate
    return None


def replace_in_table(table: dict[str, Any], old: str, new: str) -> int:
    """Replace `old` by `new` in the table's ASL and every device ASL that contains it (at the
    indentation it has there); the number of ASL texts changed."""
    count = 0
    targets: list[tuple[dict[str, Any], str]] = [(table, "asl")]
    targets += [(device, "asl") for device in table.get("devices", {}).values()]
    for holder, key in targets:
        text = holder.get(key)
        if not isinstance(text, str):
            continue
        found = as_in(text, old)
        if found is None:
            continue
        pad = found.splitlines()[0][: len(found.splitlines()[0]) - len(found.splitlines()[0].lstrip())] \
            if found != old else ""
        replacement = "\n".join(pad + ln if ln.strip() else ln for ln in new.splitlines()) if pad else new
        if new.endswith("\n") and not replacement.endswith("\n"):
            replacement += "\n"
        holder[key] = text.replace(found, replacement)
        count += 1
    return count


def decode_partial(path: Path) -> tuple[dict[str, Any], tuple[str, ...]] | None:
    """A real capture decoded with whatever decoders exist: (fingerprint, decoded categories)."""
    try:
        from harness.fingerprint import fingerprint_capture

        return fingerprint_capture(path), CATEGORIES
    except ImportError:
        pass
    try:
        from harness.capture import load_capture

        capture = load_capture(path)
    except ImportError:
        return None
    m = capture.manifest
    fp: dict[str, Any] = {"schema": 1, "source": {"capture": str(path), "build": m["build"],
                                                  "machine": m["machine"]["asked"], "guest": m["profile"]["name"]}}
    done = []
    for category in CATEGORIES:
        try:
            module = importlib.import_module(f"harness.fingerprint.{category}")
        except ImportError:
            continue
        fp[category] = module.decode(capture.raw)
        done.append(category)
    return (fp, tuple(done)) if done else None
