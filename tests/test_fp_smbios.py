"""SMBIOS decoder: every real capture cross-checked field by field against dmidecode, real facts of
the QEMU machines, synthetic tables for the structure types QEMU does not emit by default, and
malformed tables."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.errors import DecodeError
from harness.fingerprint import smbios
from harness.tools import require

CAPTURES = Path(__file__).parent / "data" / "captures"
TABLES = "sys/firmware/dmi/tables"


def complete_captures() -> list[Path]:
    out = []
    for manifest in sorted(CAPTURES.glob("*/manifest.json")):
        if json.loads(manifest.read_text()).get("complete") is True:
            out.append(manifest.parent)
    return out


CAPTURE_DIRS = complete_captures()


def manifest(capture: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((capture / "manifest.json").read_text())
    return data


# -- dmidecode -------------------------------------------------------------------------------------


def dump_file(entry_point: bytes, table: bytes, path: Path) -> Path:
    """A dmidecode --from-dump file, laid out as `dmidecode --dump-bin` writes one: the entry point
    at offset 0 with its table address patched to 32 (checksums fixed), the table at offset 32."""
    ep = bytearray(entry_point)
    if ep[:5] == b"_SM3_":
        struct.pack_into("<Q", ep, 0x10, 32)
        ep[0x05] = 0
        ep[0x05] = -sum(ep[:ep[0x06]]) & 0xFF
    elif ep[:4] == b"_SM_":
        struct.pack_into("<I", ep, 0x18, 32)
        ep[0x15] = 0
        ep[0x15] = -sum(ep[0x10:0x1F]) & 0xFF
        ep[0x04] = 0
        ep[0x04] = -sum(ep[:ep[0x05]]) & 0xFF
    else:
        raise AssertionError(f"unexpected anchor {bytes(ep[:5])!r}")
    path.write_bytes(bytes(ep[:32]).ljust(32, b"\0") + table)
    return path


@dataclass
class DmiStructure:
    handle: int
    type: int
    length: int
    title: str = ""
    values: dict[str, str] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)
    data: bytes = b""                 # -u: header and formatted area
    strings: list[bytes] = field(default_factory=list)


@dataclass
class DmiOutput:
    version: str
    count: int | None
    length: int | None
    structures: list[DmiStructure]


_HANDLE = re.compile(r"Handle 0x([0-9A-F]{4}), DMI type (\d+), (\d+) bytes")
_HEX_ROW = re.compile(r"(?:[0-9A-F]{2} )*[0-9A-F]{2}")


def dmidecode(dump: Path, *flags: str) -> str:
    result = subprocess.run([require("dmidecode"), *flags, "--from-dump", str(dump)], capture_output=True,
                            text=True, timeout=60, check=True, stdin=subprocess.DEVNULL)
    assert "<TRUNCATED>" not in result.stdout and "Wrong DMI" not in result.stdout, result.stdout
    return result.stdout


def parse_dmidecode(text: str, dump: bool = False) -> DmiOutput:
    """dmidecode's output; `dump`: of `dmidecode -u`, whose strings are hex rows."""
    version = re.search(r"^SMBIOS (\S+) present\.$", text, re.MULTILINE)
    assert version, text
    counts = re.search(r"^(\d+) structures occupying (\d+) bytes\.$", text, re.MULTILINE)
    structures: list[DmiStructure] = []
    current: DmiStructure | None = None
    key = ""
    section = ""
    pending = b""
    skip_display = False
    for line in text.splitlines():
        m = _HANDLE.fullmatch(line)
        if m:
            current = DmiStructure(int(m[1], 16), int(m[2]), int(m[3]))
            structures.append(current)
            key = section = ""
            continue
        if current is None or not line:
            continue
        if not line.startswith("\t"):
            current.title = line
        elif line.startswith("\t\t"):
            item = line[2:]
            if section == "Header and Data":
                current.data += bytes.fromhex(item)
            elif section == "Strings" and not dump:
                current.strings.append(item.encode())
            elif section == "Strings":
                if skip_display:                  # the printable form that follows the hex rows
                    skip_display = False
                    continue
                assert _HEX_ROW.fullmatch(item), line
                pending += bytes.fromhex(item)
                if pending.endswith(b"\0"):
                    current.strings.append(pending[:-1])
                    pending = b""
                    skip_display = True
            else:
                current.items.setdefault(key, []).append(item)
        else:
            key, _, value = line[1:].partition(":")
            value = value.strip()
            if key in ("Header and Data", "Strings"):
                section = key
            else:
                section = ""
                current.values[key] = value
    return DmiOutput(version[1], int(counts[1]) if counts else None, int(counts[2]) if counts else None,
                     structures)


# -- how dmidecode shows what we decode --------------------------------------------------------------

NOT_SPECIFIED = "Not Specified"
_UNITS = {"bytes": 0, "kB": 10, "MB": 20, "GB": 30, "TB": 40, "PB": 50, "EB": 60, "ZB": 70}


def text(value: str | None) -> str:
    return NOT_SPECIFIED if value is None else value


def size(value: str) -> int | None:
    if value in ("Unknown", "None", "Not Installed"):
        return None
    m = re.fullmatch(r"(\d+) (bytes|kB|MB|GB|TB|PB|EB|ZB)", value)
    assert m, f"not a dmidecode size: {value!r}"
    return int(m[1]) << _UNITS[m[2]]


def number(value: str, unit: str = "") -> int | None:
    if value in ("Unknown", "Unspecified"):
        return None
    m = re.fullmatch(r"(\d+)" + (" " + re.escape(unit) if unit else ""), value)
    assert m, f"not a number{' in ' + unit if unit else ''}: {value!r}"
    return int(m[1])


def address(value: str) -> int:
    return int(value.removesuffix("k"), 16)


def handle_ref(value: str) -> int:
    return {"Not Provided": 0xFFFE, "No Error": 0xFFFF}.get(value) or int(value, 16)


def bits_list(ours: list[str], value: str, items: list[str]) -> None:
    """A list dmidecode prints as items, or as `None` when empty."""
    if not ours:
        assert value == "None" and not items, (value, items)
    else:
        assert items == ours, (items, ours)


def out_of_spec(ours: str, theirs: str) -> None:
    if ours.startswith("out of spec"):
        assert theirs == "<OUT OF SPEC>", (ours, theirs)
    else:
        assert ours == theirs, (ours, theirs)


def volts(value: str) -> int | None:
    if value == "Unknown":
        return None
    m = re.fullmatch(r"([\d.]+) V", value)
    assert m, value
    return round(float(m[1]) * 1000)


Check = Callable[[dict[str, Any], str, list[str], DmiStructure], None]


def eq(name: str, convert: Callable[[str], Any] = lambda v: v, ours: Callable[[Any], Any] = lambda v: v) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        assert name in f, f"dmidecode shows {name!r} but we did not decode it"
        got, want = ours(f[name]), convert(value)
        assert got == want, f"{name}: ours {got!r}, dmidecode {want!r}"
        assert not items, items
    return check


def string(name: str) -> Check:
    return eq(name, ours=text)


def enum(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        out_of_spec(f[name], value)
    return check


def hexval(name: str) -> Check:
    return eq(name, lambda v: int(v, 16), lambda v: int(v, 16))


def handle(name: str) -> Check:
    return eq(name, handle_ref, lambda v: int(v, 16))


def flag_list(name: str, drop: tuple[str, ...] = ()) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        bits_list([n for n in f[name] if n not in drop], value, items)
    return check


def t0_characteristics(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    main = f["bios_characteristics"]
    if "BIOS characteristics not supported" in main:   # dmidecode stops there for the main bits
        main = ["BIOS characteristics not supported"]
    main = [n for n in main if n != "Unknown"]
    ours = main + f.get("bios_characteristics_extension_1", []) + f.get("bios_characteristics_extension_2", [])
    assert value == "" and items == ours, (items, ours)


def t0_revision(major: str, minor: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        assert value == f"{f[major]}.{f[minor]}"
    return check


def t2_handles(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert int(value) == f["number_of_contained_object_handles"]
    assert [int(i, 16) for i in items] == [int(h, 16) for h in f["contained_object_handles"]]


def t3_elements(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert int(value) == f["contained_element_count"]
    ours = [f"{e['type']} ({e['minimum']})" if e["minimum"] == e["maximum"]
            else f"{e['type']} ({e['minimum']}-{e['maximum']})" for e in f["contained_elements"]]
    assert items == ours


def t4_id(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert bytes.fromhex(value) == int(f["processor_id"], 16).to_bytes(8, "little")


def t4_signature(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    sig = f["processor_signature"]
    m = re.fullmatch(r"(?:Type (\d+), )?Family (\d+), Model (\d+), Stepping (\d+)", value)
    assert m, value
    if m[1] is not None:
        assert int(m[1]) == sig["type"]
    assert (int(m[2]), int(m[3]), int(m[4])) == (sig["family"], sig["model"], sig["stepping"])


_DMI_FLAG_NAMES = {"PSE-36": "pse36", "PSN": "pn", "CLFSH": "clflush", "DS": "dts", "HTT": "ht"}


def t4_flags(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    theirs = [_DMI_FLAG_NAMES.get(i.split(" ", 1)[0], i.split(" ", 1)[0].lower()) for i in items]
    bits_list(f["processor_flags"], value, theirs)


def t4_voltage(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == (f["voltage"] or "Unknown")


def t4_status(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == (f"Populated, {f['cpu_status']}" if f["socket_populated"] else "Unpopulated")


def t4_cache(name: str, level: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        if value in ("Not Provided", f"No {level} Cache"):
            assert f[name] == "0xffff"
        else:
            assert int(value, 16) == int(f[name], 16)
    return check


def t4_count(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        ours = f[name]
        if ours == 0xFF and f.get(name + "_2") is not None:
            ours = f[name + "_2"]
        assert int(value) == ours
    return check


def t7_configuration(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == ", ".join(["Enabled" if f["cache_enabled"] else "Disabled",
                               "Socketed" if f["cache_socketed"] else "Not Socketed",
                               f"Level {f['cache_level']}"])


def t7_size(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        ours = f.get(name + "_2" if name == "maximum_cache_size" else "installed_cache_size_2", f[name])
        assert size(value) == ours
    return check


def t7_installed_sram(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == (" ".join(f["current_sram_type"]) or "None")


def t9_type(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    width = f["slot_data_bus_width"]
    prefix = "" if width in ("Other", "Unknown") else width + " "
    assert value == prefix + f["slot_type"]


def t9_characteristics(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    ours = f["slot_characteristics_1"]
    if "Unknown" in ours:
        assert value == "Unknown" and not items
    else:
        bits_list(ours + f.get("slot_characteristics_2", []), value, items)


def t9_bus(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == f["bus_address"]


def t11_string(index: int) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        assert value == text(f["oem_strings"][index - 1])
    return check


def t17_size(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    if value == "No Module Installed":
        assert f["size"] == 0
    else:
        assert size(value) == f["size"]


def t17_width(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        ours = f[name]
        assert number(value, "bits") == (None if ours == 0 else ours)
    return check


def t17_set(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert {"None": 0, "Unknown": 255}.get(value, None if not value.isdigit() else int(value)) == f["device_set"]


def t17_detail(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == (" ".join(f["type_detail"]) or "None")


def t17_jedec(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        code = int(f[name], 16)
        if code == 0:
            assert value == "Unknown"
        else:
            assert value == f"Bank {(code & 0x7F) + 1}, Hex 0x{code >> 8:02X}"
    return check


def t17_product(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        code = int(f[name], 16)
        assert value == ("Unknown" if code == 0 else f"0x{code:04X}")
    return check


def t17_big_size(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        ours = f[name]
        if ours == 0:
            assert value == "None"
        elif ours == (1 << 64) - 1:
            assert value == "Unknown"
        else:
            assert size(value) == ours
    return check


def t17_modes(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
    assert value == (" ".join(f["memory_operating_mode_capability"]) or "None")


def t20_position(name: str) -> Check:
    def check(f: dict[str, Any], value: str, items: list[str], s: DmiStructure) -> None:
        ours = f[name]
        if value == "<OUT OF SPEC>":
            assert ours == 0
        else:
            assert number(value) == ours
    return check


CHECKS: dict[int, dict[str, Check]] = {
    0: {"Vendor": string("vendor"), "Version": string("bios_version"),
        "Release Date": string("bios_release_date"),
        "Address": eq("bios_starting_address_segment", lambda v: int(v, 16), lambda v: int(v, 16) << 4),
        "Runtime Size": eq("runtime_size", size), "ROM Size": eq("bios_rom_size", size),
        "Characteristics": t0_characteristics,
        "BIOS Revision": t0_revision("system_bios_major_release", "system_bios_minor_release"),
        "Firmware Revision": t0_revision("embedded_controller_firmware_major_release",
                                         "embedded_controller_firmware_minor_release")},
    1: {"Manufacturer": string("manufacturer"), "Product Name": string("product_name"),
        "Version": string("version"), "Serial Number": string("serial_number"),
        "UUID": eq("uuid", str.lower, str.lower), "Wake-up Type": enum("wake_up_type"),
        "SKU Number": string("sku_number"), "Family": string("family")},
    2: {"Manufacturer": string("manufacturer"), "Product Name": string("product"),
        "Version": string("version"), "Serial Number": string("serial_number"),
        "Asset Tag": string("asset_tag"), "Features": flag_list("feature_flags"),
        "Location In Chassis": string("location_in_chassis"), "Chassis Handle": handle("chassis_handle"),
        "Type": enum("board_type"), "Contained Object Handles": t2_handles},
    3: {"Manufacturer": string("manufacturer"), "Type": enum("type"), "Lock": eq("lock"),
        "Version": string("version"), "Serial Number": string("serial_number"),
        "Asset Tag": string("asset_tag_number"), "Boot-up State": enum("boot_up_state"),
        "Power Supply State": enum("power_supply_state"), "Thermal State": enum("thermal_state"),
        "Security Status": enum("security_status"), "OEM Information": hexval("oem_defined"),
        "Height": eq("height", lambda v: number(v, "U") if v != "Unspecified" else None),
        "Number Of Power Cords": eq("number_of_power_cords", number),
        "Contained Elements": t3_elements, "SKU Number": string("sku_number")},
    4: {"Socket Designation": string("socket_designation"), "Type": enum("processor_type"),
        "Family": enum("processor_family"), "Manufacturer": string("processor_manufacturer"),
        "ID": t4_id, "Signature": t4_signature, "Flags": t4_flags, "Version": string("processor_version"),
        "Voltage": t4_voltage, "External Clock": eq("external_clock", lambda v: number(v, "MHz")),
        "Max Speed": eq("max_speed", lambda v: number(v, "MHz")),
        "Current Speed": eq("current_speed", lambda v: number(v, "MHz")), "Status": t4_status,
        "Upgrade": enum("processor_upgrade"), "L1 Cache Handle": t4_cache("l1_cache_handle", "L1"),
        "L2 Cache Handle": t4_cache("l2_cache_handle", "L2"),
        "L3 Cache Handle": t4_cache("l3_cache_handle", "L3"), "Serial Number": string("serial_number"),
        "Asset Tag": string("asset_tag"), "Part Number": string("part_number"),
        "Core Count": t4_count("core_count"), "Core Enabled": t4_count("core_enabled"),
        "Thread Count": t4_count("thread_count"),
        "Thread Enabled": eq("thread_enabled", int),
        "Characteristics": flag_list("processor_characteristics", drop=("Unknown",))},
    7: {"Socket Designation": string("socket_designation"), "Configuration": t7_configuration,
        "Operational Mode": eq("operational_mode"), "Location": enum("cache_location"),
        "Installed Size": t7_size("installed_size"), "Maximum Size": t7_size("maximum_cache_size"),
        "Supported SRAM Types": flag_list("supported_sram_type"), "Installed SRAM Type": t7_installed_sram,
        "Speed": eq("cache_speed", lambda v: number(v, "ns")), "Error Correction Type": enum("error_correction_type"),
        "System Type": enum("system_cache_type"), "Associativity": enum("associativity")},
    9: {"Designation": string("slot_designation"), "Type": t9_type, "Current Usage": enum("current_usage"),
        "Length": enum("slot_length"), "ID": eq("slot_id", int), "Characteristics": t9_characteristics,
        "Bus Address": t9_bus, "Data Bus Width": eq("data_bus_width", int),
        "Peer Devices": eq("peer_grouping_count", int)},
    11: {f"String {i}": t11_string(i) for i in range(1, 256)},
    16: {"Location": enum("location"), "Use": enum("use"),
         "Error Correction Type": enum("memory_error_correction"),
         "Maximum Capacity": eq("maximum_capacity", size),
         "Error Information Handle": handle("memory_error_information_handle"),
         "Number Of Devices": eq("number_of_memory_devices", int)},
    17: {"Array Handle": handle("physical_memory_array_handle"),
         "Error Information Handle": handle("memory_error_information_handle"),
         "Total Width": t17_width("total_width"), "Data Width": t17_width("data_width"), "Size": t17_size,
         "Form Factor": enum("form_factor"), "Set": t17_set, "Locator": string("device_locator"),
         "Bank Locator": string("bank_locator"), "Type": enum("memory_type"), "Type Detail": t17_detail,
         "Speed": eq("speed", lambda v: number(v, "MT/s")), "Manufacturer": string("manufacturer"),
         "Serial Number": string("serial_number"), "Asset Tag": string("asset_tag"),
         "Part Number": string("part_number"), "Rank": eq("rank", number),
         "Configured Memory Speed": eq("configured_memory_speed", lambda v: number(v, "MT/s")),
         "Minimum Voltage": eq("minimum_voltage", volts), "Maximum Voltage": eq("maximum_voltage", volts),
         "Configured Voltage": eq("configured_voltage", volts), "Memory Technology": enum("memory_technology"),
         "Memory Operating Mode Capability": t17_modes, "Firmware Version": string("firmware_version"),
         "Module Manufacturer ID": t17_jedec("module_manufacturer_id"),
         "Module Product ID": t17_product("module_product_id"),
         "Memory Subsystem Controller Manufacturer ID": t17_jedec("memory_subsystem_controller_manufacturer_id"),
         "Memory Subsystem Controller Product ID": t17_product("memory_subsystem_controller_product_id"),
         "Non-Volatile Size": t17_big_size("non_volatile_size"), "Volatile Size": t17_big_size("volatile_size"),
         "Cache Size": t17_big_size("cache_size"), "Logical Size": t17_big_size("logical_size")},
    19: {"Starting Address": eq("starting_address", address, lambda v: int(v, 16)),
         "Ending Address": eq("ending_address", address, lambda v: int(v, 16)),
         "Range Size": eq("range_size", size), "Physical Array Handle": handle("memory_array_handle"),
         "Partition Width": eq("partition_width", int)},
    20: {"Starting Address": eq("starting_address", address, lambda v: int(v, 16)),
         "Ending Address": eq("ending_address", address, lambda v: int(v, 16)),
         "Range Size": eq("range_size", size), "Physical Device Handle": handle("memory_device_handle"),
         "Memory Array Mapped Address Handle": handle("memory_array_mapped_address_handle"),
         "Partition Row Position": t20_position("partition_row_position"),
         "Interleave Position": t20_position("interleave_position"),
         "Interleaved Data Depth": t20_position("interleaved_data_depth")},
    32: {"Status": eq("boot_status")},
    127: {},
}


def cross_check(ours: dict[str, Any], entry_point: bytes, table: bytes, tmp_path: Path) -> int:
    """Assert that our decoding agrees with dmidecode's on every field both decode; returns the
    number of fields compared."""
    dump = dump_file(entry_point, table, tmp_path / "dmi.bin")
    plain = parse_dmidecode(dmidecode(dump))
    raw = parse_dmidecode(dmidecode(dump, "-u"), dump=True)
    ep = ours["entry_point"]
    assert plain.version == ep["version"]
    if ep["kind"] == "2.x":
        assert (plain.count, plain.length) == (ep["structure_count"], ep["table_length"])
    structures = {k: v for k, v in ours.items() if k != "entry_point"}
    assert len(plain.structures) == len(structures) == len(raw.structures)
    compared = 0
    for (key, entry), theirs, dumped in zip(structures.items(), plain.structures, raw.structures, strict=True):
        where = f"{key} (handle {entry['handle']})"
        assert (theirs.handle, theirs.type, theirs.length) == (int(entry["handle"], 16), entry["type"],
                                                                entry["length"]), where
        assert key.split("/")[0] == str(entry["type"])
        assert dumped.strings == [s.encode("ascii") for s in entry["strings"]], where
        assert dumped.data[:4] == bytes([entry["type"], entry["length"]]) + int(entry["handle"], 16).to_bytes(2, "little")
        if "hex" in entry:
            assert dumped.data[4:].hex() == entry["hex"], where
            continue
        assert entry["label"] == f"type {entry['type']} {theirs.title}", where
        checks = CHECKS[entry["type"]]
        for name in theirs.values.keys() | theirs.items.keys():
            assert name in checks, f"{where}: dmidecode shows {name!r}, which this test does not map"
            try:
                checks[name](entry["fields"], theirs.values.get(name, ""), theirs.items.get(name, []), theirs)
            except (AssertionError, KeyError) as exc:
                raise AssertionError(f"{where}: {name!r} = {theirs.values.get(name)!r} "
                                     f"{theirs.items.get(name, [])}: {exc!r}") from exc
            compared += 1
    return compared


# -- real captures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dmidecode_available() -> None:
    require("dmidecode")


def test_there_are_captures() -> None:
    assert len(CAPTURE_DIRS) >= 4


@pytest.mark.parametrize("capture", CAPTURE_DIRS, ids=lambda p: p.name)
def test_agrees_with_dmidecode(capture: Path, tmp_path: Path, dmidecode_available: None) -> None:
    raw = capture / "raw"
    ours = smbios.decode(raw)
    compared = cross_check(ours, (raw / TABLES / "smbios_entry_point").read_bytes(),
                           (raw / TABLES / "DMI").read_bytes(), tmp_path)
    assert compared >= 60       # QEMU's nine structures show about 75 fields


PRODUCT = {"i440fx": "Standard PC (i440FX + PIIX, 1996)", "q35": "Standard PC (Q35 + ICH9, 2009)"}


@pytest.mark.parametrize("capture", CAPTURE_DIRS, ids=lambda p: p.name)
def test_real_facts(capture: Path) -> None:
    m = manifest(capture)
    ours = smbios.decode(capture / "raw")
    ep = ours["entry_point"]
    assert ep["checksum_valid"] and ep.get("intermediate_checksum_valid", True)
    assert ep["pointers"]["table_address"].startswith("0x")
    system = ours["1/0"]["fields"]
    assert system["manufacturer"] == "QEMU"
    assert system["product_name"] == PRODUCT[m["machine"]["family"]]
    assert system["version"] == m["machine"]["resolved"]
    assert system["uuid"] == m["profile"]["uuid"]
    sockets = m["profile"]["smp"].get("sockets", 1)
    processors = [k for k in ours if k.startswith("4/")]
    assert len(processors) == sockets
    cpu = ours["4/0"]["fields"]
    smp = m["profile"]["smp"]
    assert cpu["core_count"] == smp.get("cores", 1)
    assert ours["3/0"]["fields"]["manufacturer"] == "QEMU"
    assert ours["17/0"]["fields"]["size"] == m["profile"]["memory_mib"] << 20
    assert ours["19/0"]["fields"]["range_size"] == m["profile"]["memory_mib"] << 20
    assert list(ours)[-1] == "127/0"
    assert ep["bytes_after_end_of_table"] == 0


def test_keys_count_instances_per_type() -> None:
    ours = smbios.decode(CAPTURE_DIRS[0] / "raw")
    for key, entry in ours.items():
        if key != "entry_point":
            t, i = key.split("/")
            assert int(t) == entry["type"] and i == "0"
            assert entry["label"].startswith(f"type {t} ")
            assert re.fullmatch(r"0x[0-9a-f]{4}", entry["handle"])


def test_decode_time() -> None:
    import time

    raw = CAPTURE_DIRS[0] / "raw"
    start = time.perf_counter()
    for _ in range(20):
        smbios.decode(raw)
    assert (time.perf_counter() - start) / 20 < 0.05


# -- synthetic tables: the types QEMU emits only on request --------------------------------------------


def structure(smbios_type: int, handle: int, body: bytes, strings: tuple[str, ...] = ()) -> bytes:
    header = bytes([smbios_type, 4 + len(body)]) + handle.to_bytes(2, "little")
    tail = b"\0".join(s.encode() for s in strings) + b"\0\0" if strings else b"\0\0"
    return header + body + tail


def synthetic_structures() -> list[bytes]:
    p = struct.pack
    return [
        structure(0, 0x0000, p("<BBHBBQBBBBBBH", 1, 2, 0xE800, 3, 0xFF, 0x19890, 0x03, 0x0D, 1, 2, 3, 4, 0x0010),
                  ("Vendor X", "1.2.3", "01/02/2020")),
        structure(1, 0x0100, p("<BBBB16sBBB", 1, 2, 3, 0, bytes(range(16)), 6, 0, 4),
                  ("QEMU", "Standard PC (Q35 + ICH9, 2009)", "pc-q35-9.2", "Family")),
        structure(2, 0x0200, p("<BBBBBBBHBBH", 1, 2, 3, 4, 5, 0x09, 6, 0x0300, 0x0A, 1, 0x0400),
                  ("QEMU", "Board", "1.0", "SN1", "AT1", "Slot A")),
        structure(3, 0x0300, p("<BBBBBBBBBIBBBB", 1, 0x81, 2, 3, 4, 3, 3, 3, 3, 0x12345678, 2, 1, 1, 3)
                  + bytes([0x83, 1, 2, 5]), ("Chassis Inc", "v1", "CSN", "CAT", "SKU9")),
        structure(4, 0x0400, p("<BBBBQBBHHHBBHHHBBBBBBHHHHHH", 1, 3, 0xC6, 2, 0x178BFBFD000306A9, 3, 0x8A, 100,
                               3000, 2800, 0x41, 0x04, 0x0700, 0x0701, 0xFFFF, 4, 5, 6, 0xFF, 0xFF, 0xFF,
                               0x00FC, 0x00C6, 300, 280, 560, 500),
                  ("CPU 0", "Intel", "Intel(R) Core(TM) i7", "PSN", "PAT", "PPN")),
        structure(4, 0x0401, p("<BBBBQBBHHHBBHHHBBBBBBHH", 1, 3, 0xFE, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xFFFF,
                               0xFFFF, 0xFFFF, 0, 0, 0, 1, 1, 1, 0x0004, 0x0101), ("CPU 1",)),
        structure(4, 0x0402, p("<BBBBQBBHHHBBHHHBBBBBBHH", 1, 3, 0xBE, 2, 0x0000000000000F48, 0, 0, 0, 0, 0,
                               0x41, 0x01, 0xFFFF, 0xFFFF, 0xFFFF, 0, 0, 0, 1, 1, 1, 0x0004, 0),
                  ("CPU 2", "AMD")),
        structure(7, 0x0700, p("<BHHHHHBBBBII", 1, 0x0180, 0x20, 0x20, 0x2, 0x2, 0, 5, 4, 7, 0x20, 0x20),
                  ("L1 Cache",)),
        structure(7, 0x0701, p("<BHHHHHBBBBII", 1, 0x02A9, 0xFFFF, 0x8010, 0x60, 0x20, 10, 6, 5, 8,
                               0x80000040, 0x80000010), ("L2 Cache",)),
        structure(9, 0x0900, p("<BBBBBHBBHBBBB", 1, 0xA5, 0x08, 3, 4, 1, 0x04, 0x01, 0, 0, 0x18, 8, 0),
                  ("PCIe Slot 1",)),
        structure(9, 0x0901, p("<BBBBBHBBHBB", 1, 0x06, 0x05, 4, 3, 2, 0x01, 0, 0xFFFF, 0xFF, 0xFF),
                  ("PCI Slot 2",)),
        structure(11, 0x0B00, bytes([2]), ("hello", "world")),
        structure(16, 0x1000, p("<BBBIHHQ", 3, 3, 3, 0x80000000, 0xFFFF, 2, 8 << 40)),
        structure(17, 0x1100, p("<HHHHHBBBBBHHBBBBBIHHHHBHBHHHHQQQQII", 0x1000, 0xFFFF, 72, 64, 0x7FFF, 9, 1, 1, 2,
                                0x1A, 0x2080, 3200, 3, 4, 5, 6, 2, 32768, 2933, 1200, 1350, 1200, 3, 0x8, 0,
                                0x2C80, 0x1234, 0, 0, 0, 0, 0, 0, 0, 0),
                  ("DIMM A", "BANK 0", "Micron", "SN", "AT", "PN")),
        structure(19, 0x1300, p("<IIHBQQ", 0xFFFFFFFF, 0xFFFFFFFF, 0x1000, 2, 1 << 32, (3 << 32) - 1)),
        structure(20, 0x1400, p("<IIHHBBB", 0, 0x7FFFF, 0x1100, 0x1300, 1, 0, 0)),
        structure(20, 0x1401, p("<IIHHBBBQQ", 0xFFFFFFFF, 0xFFFFFFFF, 0x1100, 0x1300, 0xFF, 1, 2, 1 << 32,
                                (3 << 32) - 1)),
        structure(32, 0x2000, bytes(6) + bytes([0x81])),
        structure(200, 0xC800, bytes([1, 2, 3, 4]), ("oem",)),
        structure(127, 0x7F00, b""),
    ]


def entry_point_2x(structures: list[bytes], version: tuple[int, int] = (2, 8)) -> bytes:
    table = b"".join(structures)
    ep = bytearray(b"_SM_" + bytes([0, 0x1F, *version]) + struct.pack("<H", max(map(len, structures)))
                   + bytes(6) + b"_DMI_" + bytes([0]) + struct.pack("<HIH", len(table), 0xF5000, len(structures))
                   + bytes([version[0] << 4 | version[1]]))
    ep[0x15] = -sum(ep[0x10:0x1F]) & 0xFF
    ep[0x04] = -sum(ep[:0x1F]) & 0xFF
    return bytes(ep)


def entry_point_3x(table_length: int, version: tuple[int, int, int] = (3, 4, 0)) -> bytes:
    ep = bytearray(b"_SM3_" + bytes([0, 0x18, *version, 1, 0]) + struct.pack("<IQ", table_length, 0x7FFFF000))
    ep[0x05] = -sum(ep) & 0xFF
    return bytes(ep)


def write_raw(tmp_path: Path, entry_point: bytes, table: bytes) -> Path:
    raw = tmp_path / "raw"
    (raw / TABLES).mkdir(parents=True, exist_ok=True)
    (raw / TABLES / "smbios_entry_point").write_bytes(entry_point)
    (raw / TABLES / "DMI").write_bytes(table)
    return raw


@pytest.mark.parametrize("kind", ["2.x", "3.x"])
def test_synthetic_types_agree_with_dmidecode(kind: str, tmp_path: Path, dmidecode_available: None) -> None:
    structures = synthetic_structures()
    table = b"".join(structures)
    ep = entry_point_2x(structures) if kind == "2.x" else entry_point_3x(len(table))
    ours = smbios.decode(write_raw(tmp_path, ep, table))
    assert ours["entry_point"]["kind"] == kind
    compared = cross_check(ours, ep, table, tmp_path)
    assert compared >= 180
    decoded = {e["type"] for k, e in ours.items() if k != "entry_point" and "fields" in e}
    assert decoded == set(smbios.DECODERS)
    assert ours["200/0"]["hex"] == "01020304" and ours["200/0"]["label"] == "type 200 OEM-specific Type"
    assert ours["4/1"]["fields"]["processor_family"] == "ARMv8"
    assert ours["11/0"]["fields"]["oem_strings"] == ["hello", "world"]
    if kind == "3.x":
        assert ours["entry_point"]["version"] == "3.4.0"
        assert ours["entry_point"]["structure_count"] is None
        assert ours["entry_point"]["max_structure_size"] == max(map(len, structures))
        assert ours["entry_point"]["pointers"] == {"table_address": "0x000000007ffff000"}


def test_uuid_byte_order_follows_the_version(tmp_path: Path) -> None:
    uuid = bytes.fromhex("3c0d1e6a000000408000000000000003")
    body = struct.pack("<BBBB16sBBB", 1, 0, 0, 0, uuid, 6, 0, 0)
    for version, expected in (((2, 8), "6a1e0d3c-0000-4000-8000-000000000003"),
                              ((2, 5), "3c0d1e6a-0000-0040-8000-000000000003")):
        structures = [structure(1, 0x100, body, ("QEMU",)), structure(127, 0x7F00, b"")]
        raw = write_raw(tmp_path, entry_point_2x(structures, version), b"".join(structures))
        assert smbios.decode(raw)["1/0"]["fields"]["uuid"] == expected
    for filler, expected in ((b"\xff", "Not Present"), (b"\0", "Not Settable")):
        body = struct.pack("<BBBB16sBBB", 1, 0, 0, 0, filler * 16, 6, 0, 0)
        structures = [structure(1, 0x100, body, ("QEMU",)), structure(127, 0x7F00, b"")]
        raw = write_raw(tmp_path, entry_point_2x(structures), b"".join(structures))
        assert smbios.decode(raw)["1/0"]["fields"]["uuid"] == expected


# -- malformed tables ----------------------------------------------------------------------------------


def decode_table(tmp_path: Path, structures: list[bytes], count: int | None = None) -> dict[str, Any]:
    table = b"".join(structures)
    ep = bytearray(entry_point_2x(structures))
    if count is not None:
        struct.pack_into("<H", ep, 0x1C, count)
    return smbios.decode(write_raw(tmp_path, bytes(ep), table))


END = structure(127, 0x7F00, b"")


def test_bad_string_index(tmp_path: Path) -> None:
    bad = structure(1, 0x100, struct.pack("<BBBB", 1, 2, 5, 0), ("QEMU", "PC"))
    with pytest.raises(DecodeError, match="string 5 referenced, but the structure has 2 strings"):
        decode_table(tmp_path, [bad, END])


def test_structure_past_the_end(tmp_path: Path) -> None:
    runaway = bytes([1, 0x40, 0, 1]) + bytes(8)
    with pytest.raises(DecodeError, match="runs past the end") as info:
        decode_table(tmp_path, [runaway], count=1)
    assert info.value.file == smbios.TABLE_FILE and info.value.offset == 0


def test_missing_double_nul(tmp_path: Path) -> None:
    unterminated = bytes([1, 8, 0, 1, 1, 0, 0, 0]) + b"QEMU\0"
    with pytest.raises(DecodeError, match="double-NUL"):
        decode_table(tmp_path, [unterminated], count=1)


def test_short_structure_length(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="length 2"):
        decode_table(tmp_path, [bytes([1, 2, 0, 1, 0, 0]), END])


def test_duplicate_handles(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="handle 0x0100 used twice"):
        decode_table(tmp_path, [structure(32, 0x100, bytes(7)), structure(32, 0x100, bytes(7)), END])


def test_no_end_of_table(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="without an end-of-table"):
        decode_table(tmp_path, [structure(32, 0x100, bytes(7))], count=5)


def test_count_bounds_the_walk(tmp_path: Path) -> None:
    ours = decode_table(tmp_path, [structure(32, 0x100, bytes(7)), structure(32, 0x101, bytes(7)), END], count=1)
    assert list(ours) == ["entry_point", "32/0"]
    assert ours["entry_point"]["bytes_after_end_of_table"] > 0


def test_table_longer_than_the_entry_point_says(tmp_path: Path) -> None:
    structures = [structure(32, 0x100, bytes(7)), END]
    raw = write_raw(tmp_path, entry_point_2x(structures), b"".join(structures) + bytes(16))
    with pytest.raises(DecodeError, match="more than the entry point's table length"):
        smbios.decode(raw)


def test_too_many_structures(tmp_path: Path) -> None:
    many = [structure(32, h, bytes(7)) for h in range(smbios.MAX_STRUCTURES + 1)]
    table = b"".join(many)
    raw = write_raw(tmp_path, entry_point_3x(len(table)), table)
    with pytest.raises(DecodeError, match=f"more than {smbios.MAX_STRUCTURES} structures"):
        smbios.decode(raw)


@pytest.mark.parametrize("entry_point, message", [
    (b"_XX_" + bytes(27), "no SMBIOS anchor"),
    (b"_SM_\0\x1f\x02\x08", "runs past the end"),
    (b"_SM_\0\x10\x02\x08" + bytes(23), "length 16"),
    (b"_SM3_\0\x08" + bytes(17), "length 8"),
    (b"_SM_\0\x1f\x02\x08" + bytes(8) + b"_XMI_" + bytes(10), "no _DMI_ anchor"),
])
def test_bad_entry_points(entry_point: bytes, message: str, tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match=message) as info:
        smbios.decode(write_raw(tmp_path, entry_point, bytes(END)))
    assert info.value.file == smbios.ENTRY_POINT_FILE


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="missing from the capture"):
        smbios.decode(tmp_path)
